// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title FeeOnTransferToken
/// @notice Test-only ERC-20 that burns a fee (1% by default) of every transfer, like a token whose fee switch
/// can be turned on after launch. Anyone may mint or change the fee.
contract FeeOnTransferToken is ERC20 {
    /// @notice Fee in basis points taken from every transfer between two non-zero accounts.
    uint256 public feeBps = 100;

    constructor() ERC20("Fee On Transfer", "FOT") {}

    /// @notice Sets the transfer fee. Unrestricted: test use only.
    function setFeeBps(uint256 newFeeBps) external {
        feeBps = newFeeBps;
    }

    /// @notice Mints `amount` to `to`. Unrestricted: test use only.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 burned = value * feeBps / 10_000;
        super._update(from, address(0), burned);
        super._update(from, to, value - burned);
    }
}
