// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {PaymentRouter, PaymentIntent, PermitData} from "../../contracts/src/PaymentRouter.sol";
import {RouterFixture} from "./utils/RouterFixture.sol";

/// @notice One operation per test in the benchmark's steady state (non-zero balances on both sides, finite
/// allowances, the invoice's bitmap word already in use), so `forge snapshot` (`.gas-snapshot`) tracks the
/// cost of each path. Transaction-level ratios against `transferFrom` come from `scripts/bench_gas.py`.
contract PaymentRouterGasTest is RouterFixture {
    uint256 internal constant AMOUNT = 12_345_678;
    uint256 internal constant FEE = 123_456;
    address internal spender = address(0x5BE7);

    function setUp() public override {
        super.setUp();
        vm.startPrank(owner);
        token.mint(payout, 1e6);
        token.mint(treasury, 1e6);
        vm.stopPrank();
        vm.startPrank(payer);
        token.approve(address(router), 1e15); // finite: the allowance slot is written, as for the baseline
        token.approve(spender, 1e15);
        vm.stopPrank();
        _pay(_intent(0, AMOUNT, 0)); // bitmap word 0 in use
    }

    /// @dev Pays `intent` as the payer; the intent and its signature are built in memory (no storage reads
    /// in the test itself, so the figure is dominated by the router call).
    function _payNow(PaymentIntent memory intent) internal {
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);
    }

    function test_gas_transferFrom_baseline() public {
        vm.prank(spender);
        assertTrue(token.transferFrom(payer, payout, AMOUNT), "transferFrom");
    }

    function test_gas_pay_noFee() public {
        _payNow(_intent(1, AMOUNT, 0));
    }

    function test_gas_pay_withFee() public {
        _payNow(_intent(2, AMOUNT, FEE));
    }

    function test_gas_pay_noFee_windowMoveWritesBack() public {
        _payNow(_intent(256, AMOUNT, 0)); // moves the cached window: invoice 0 is written back to a new word
    }

    function test_gas_payWithPermit() public {
        uint256 key = 0xF2E5;
        address who = vm.addr(key);
        vm.prank(owner);
        token.mint(who, AMOUNT);
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                token.DOMAIN_SEPARATOR(),
                keccak256(
                    abi.encode(
                        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                        who,
                        address(router),
                        AMOUNT,
                        0,
                        block.timestamp + 1 hours
                    )
                )
            )
        );
        PermitData memory p;
        (p.v, p.r, p.s) = vm.sign(key, digest);
        p.value = AMOUNT;
        p.deadline = block.timestamp + 1 hours;
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(who);
        router.payWithPermit(intent, r, vs, p);
    }

    function test_gas_refund_partial() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, AMOUNT / 2);
    }
}
