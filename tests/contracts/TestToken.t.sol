// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {TestToken} from "../../contracts/src/TestToken.sol";
import {Test} from "./utils/Test.sol";

contract TestTokenTest is Test {
    bytes32 internal constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    address internal owner = address(0xA11);
    TestToken internal token;

    function setUp() public {
        token = new TestToken(owner);
    }

    function test_metadata() public view {
        assertEq(keccak256(bytes(token.name())), keccak256("FollowPay Test USD"), "name");
        assertEq(keccak256(bytes(token.symbol())), keccak256("tUSD"), "symbol");
        assertEq(token.decimals(), 6, "decimals");
        assertEq(token.owner(), owner, "owner");
        assertEq(token.totalSupply(), 0, "supply");
    }

    function test_mint_byOwner() public {
        vm.expectEmit(address(token));
        emit IERC20.Transfer(address(0), address(0xB0B), 5e6);
        vm.prank(owner);
        token.mint(address(0xB0B), 5e6);
        assertEq(token.balanceOf(address(0xB0B)), 5e6, "balance");
        assertEq(token.totalSupply(), 5e6, "supply");
    }

    function test_mint_revertsForNonOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        token.mint(address(this), 1);
    }

    function test_permit_setsAllowanceAndNonce() public {
        uint256 key = 0xB0B;
        address holder = vm.addr(key);
        uint256 deadline = block.timestamp + 1 hours;
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                token.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(PERMIT_TYPEHASH, holder, address(0xCAFE), 7e6, 0, deadline))
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        token.permit(holder, address(0xCAFE), 7e6, deadline, v, r, s);
        assertEq(token.allowance(holder, address(0xCAFE)), 7e6, "allowance");
        assertEq(token.nonces(holder), 1, "nonce");

        vm.expectRevert(
            abi.encodeWithSelector(ERC20Permit.ERC2612InvalidSigner.selector, _recover(digest, v, r, s, 1), holder)
        );
        token.permit(holder, address(0xCAFE), 7e6, deadline, v, r, s); // replay: nonce moved on
    }

    function test_permit_revertsWhenExpired() public {
        vm.warp(1000);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, 999));
        token.permit(address(0xB0B), address(0xCAFE), 1, 999, 27, bytes32(0), bytes32(0));
    }

    function testFuzz_transfer(uint256 amount, uint256 sent) public {
        amount = _bound(amount, 0, type(uint128).max);
        sent = _bound(sent, 0, amount);
        vm.prank(owner);
        token.mint(address(this), amount);
        assertTrue(token.transfer(address(0xD00D), sent), "transfer");
        assertEq(token.balanceOf(address(this)), amount - sent, "sender");
        assertEq(token.balanceOf(address(0xD00D)), sent, "recipient");
    }

    /// @dev The signer that the replayed permit (with nonce `nonce`) recovers to.
    function _recover(bytes32, uint8 v, bytes32 r, bytes32 s, uint256 nonce) internal view returns (address) {
        address holder = vm.addr(0xB0B);
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                token.DOMAIN_SEPARATOR(),
                keccak256(abi.encode(PERMIT_TYPEHASH, holder, address(0xCAFE), 7e6, nonce, block.timestamp + 1 hours))
            )
        );
        return ecrecover(digest, v, r, s);
    }
}
