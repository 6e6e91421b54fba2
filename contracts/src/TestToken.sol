// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title TestToken
/// @notice The local testnet stablecoin: ERC-20 with ERC-2612 permit, 6 decimals, owner-mintable.
contract TestToken is ERC20, ERC20Permit, Ownable {
    constructor(address initialOwner)
        ERC20("FollowPay Test USD", "tUSD")
        ERC20Permit("FollowPay Test USD")
        Ownable(initialOwner)
    {}

    /// @notice Mints `amount` base units to `to`. Owner only.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
