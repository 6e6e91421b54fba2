// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken
/// @notice Test-only ERC-20 that, once armed, calls `target` with `data` from inside every `transferFrom`
/// and records whether that call succeeded (and its revert data) instead of bubbling it up.
contract ReentrantToken is ERC20 {
    address private _target;
    bytes private _data;
    bool private _armed;

    /// @notice Whether the last re-entrant call succeeded.
    bool public lastCallSucceeded;
    /// @notice Revert data of the last re-entrant call.
    bytes public lastRevertData;

    constructor() ERC20("Reentrant", "RE") {}

    /// @notice Mints `amount` to `to`. Unrestricted: test use only.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Makes the next `transferFrom` call `target` with `data` (once).
    function arm(address target, bytes calldata data) external {
        require(target != address(0), "ReentrantToken: zero target");
        _target = target;
        _data = data;
        _armed = true;
    }

    /// @inheritdoc ERC20
    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (_armed) {
            _armed = false;
            (bool ok, bytes memory ret) = _target.call(_data);
            lastCallSucceeded = ok;
            lastRevertData = ret;
        }
        return super.transferFrom(from, to, value);
    }
}
