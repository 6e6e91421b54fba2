// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {PaymentRouter, PaymentIntent, PermitData} from "../../../contracts/src/PaymentRouter.sol";
import {TestToken} from "../../../contracts/src/TestToken.sol";
import {Test} from "./Test.sol";

/// @notice Shared setup: a token, a router and one registered merchant with funded, approving payers.
abstract contract RouterFixture is Test {
    bytes32 internal constant INTENT_TYPEHASH = keccak256(
        "PaymentIntent(address merchant,address token,uint256 amount,uint256 fee,uint256 invoiceId,address payer,uint256 deadline)"
    );
    bytes32 internal constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    uint256 internal constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    uint256 internal constant CURVE_ORDER = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141;

    uint256 internal constant OPERATOR_KEY = 0x0bE7A70B;
    uint256 internal constant PAYER_KEY = 0xB0B;
    uint256 internal constant START_BALANCE = 1_000_000e6;
    uint256 internal constant PAUSE_BOND = 10 ether;

    address internal owner = address(0xA11);
    address internal treasury = address(0x7EA5);
    address internal merchant = address(0x3E5C);
    address internal payout = address(0x9A7);
    address internal operator;
    address internal payer;

    TestToken internal token;
    PaymentRouter internal router;

    function setUp() public virtual {
        vm.warp(1_750_000_000);
        operator = vm.addr(OPERATOR_KEY);
        payer = vm.addr(PAYER_KEY);
        token = new TestToken(owner);
        router = new PaymentRouter(owner, treasury, PAUSE_BOND);
        vm.prank(merchant);
        router.registerMerchant(payout, operator);
        vm.startPrank(owner);
        token.mint(payer, START_BALANCE);
        token.mint(merchant, START_BALANCE);
        vm.stopPrank();
        vm.prank(payer);
        token.approve(address(router), type(uint256).max);
        vm.prank(merchant);
        token.approve(address(router), type(uint256).max);
    }

    /// @dev The owner pauses, posting the bond.
    function _pauseRouter() internal {
        vm.deal(owner, owner.balance + PAUSE_BOND);
        vm.prank(owner);
        router.pause{value: PAUSE_BOND}();
    }

    function _intent(uint256 invoiceId, uint256 amount, uint256 fee) internal view returns (PaymentIntent memory) {
        return PaymentIntent({
            merchant: merchant,
            token: address(token),
            amount: amount,
            fee: fee,
            invoiceId: invoiceId,
            payer: address(0),
            deadline: block.timestamp + 15 minutes
        });
    }

    /// @dev The EIP-712 digest computed independently of the router.
    function _digest(PaymentIntent memory intent) internal view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(
                DOMAIN_TYPEHASH, keccak256("FollowPay PaymentRouter"), keccak256("1"), block.chainid, address(router)
            )
        );
        bytes32 structHash = keccak256(abi.encode(INTENT_TYPEHASH, intent));
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _sign(uint256 key, PaymentIntent memory intent) internal view returns (bytes32 r, bytes32 vs) {
        return vm.signCompact(key, _digest(intent));
    }

    function _pay(PaymentIntent memory intent) internal {
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);
    }
}
