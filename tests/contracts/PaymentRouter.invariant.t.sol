// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {PaymentRouter} from "../../contracts/src/PaymentRouter.sol";
import {TestToken} from "../../contracts/src/TestToken.sol";
import {PaymentRouterHandler} from "./handlers/PaymentRouterHandler.sol";
import {Test} from "./utils/Test.sol";

/// @notice Invariants of the router under random payments, replays, refunds and rotations.
contract PaymentRouterInvariantTest is Test {
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    uint256 internal constant START = 1_000_000e6;

    TestToken internal token;
    PaymentRouter internal router;
    PaymentRouterHandler internal handler;
    address internal merchant = address(0x3E5C);
    address internal treasury = address(0x7EA5);

    function setUp() public {
        vm.warp(1_750_000_000);
        token = new TestToken(address(this));
        router = new PaymentRouter(address(this), treasury, 10 ether);
        handler = new PaymentRouterHandler(router, token, merchant, treasury, 0x0bE7A70B);
        address firstPayout = handler.payouts(0);
        address operator = vm.addr(0x0bE7A70B);
        vm.prank(merchant); // arguments first: an external call in them would consume the prank
        router.registerMerchant(firstPayout, operator);
        token.mint(merchant, START);
        vm.prank(merchant);
        token.approve(address(router), type(uint256).max);
        for (uint256 i; i < 3; ++i) {
            address p = handler.payers(i);
            token.mint(p, START);
            vm.prank(p);
            token.approve(address(router), type(uint256).max);
        }
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function targetSelectors() public view returns (FuzzSelector[] memory targets) {
        bytes4[] memory selectors = new bytes4[](6);
        selectors[0] = PaymentRouterHandler.pay.selector;
        selectors[1] = PaymentRouterHandler.pay.selector; // payments twice as likely
        selectors[2] = PaymentRouterHandler.refund.selector;
        selectors[3] = PaymentRouterHandler.rotateOperator.selector;
        selectors[4] = PaymentRouterHandler.switchPayout.selector;
        selectors[5] = PaymentRouterHandler.warp.selector;
        targets = new FuzzSelector[](1);
        targets[0] = FuzzSelector(address(handler), selectors);
    }

    function _payersBalance() internal view returns (uint256 sum) {
        for (uint256 i; i < 3; ++i) {
            sum += token.balanceOf(handler.payers(i));
        }
    }

    /// @dev Nothing is created or lost: every unit sits with a known party and the router holds none.
    function invariant_tokenConservation() public view {
        uint256 total = _payersBalance() + token.balanceOf(merchant) + token.balanceOf(treasury)
            + token.balanceOf(handler.payouts(0)) + token.balanceOf(handler.payouts(1));
        assertEq(total, token.totalSupply(), "supply accounted");
        assertEq(token.balanceOf(address(router)), 0, "router holds no tokens");
    }

    /// @dev Every party's balance matches the ghost sums of what the router was asked to move.
    function invariant_ghostSums() public view {
        assertEq(
            token.balanceOf(handler.payouts(0)) + token.balanceOf(handler.payouts(1)),
            handler.ghostNet(),
            "payouts received amount - fee"
        );
        assertEq(token.balanceOf(treasury), handler.ghostFees(), "treasury received fees");
        assertEq(token.balanceOf(merchant), START - handler.ghostRefunded(), "merchant funded refunds");
        assertEq(_payersBalance() + handler.ghostPaid(), 3 * START + handler.ghostRefunded(), "payers");
        assertEq(handler.ghostPaid(), handler.ghostNet() + handler.ghostFees(), "amount = net + fee");
    }

    /// @dev An invoice id never settles twice, and every settled id reads as settled.
    function invariant_noInvoiceSettlesTwice() public view {
        assertEq(handler.ghostDoubleSettlements(), 0, "double settlement");
        uint256 n = handler.settledCount();
        for (uint256 i; i < n; ++i) {
            assertTrue(router.isSettled(merchant, handler.settledIds(i)), "settled id reads as settled");
        }
    }

    /// @dev After each run: payments did happen, and the router's view of every id in the range (cached
    /// window or bitmap) is exactly the set of ids that settled.
    function afterInvariant() public view {
        assertGe(handler.settledCount(), 1, "no payment ever settled");
        uint256 range = handler.INVOICE_RANGE();
        for (uint256 id; id < range; ++id) {
            assertEq(
                router.isSettled(merchant, id) ? 1 : 0, handler.ghostSettled(id) ? 1 : 0, "isSettled matches ghost"
            );
        }
    }

    /// @dev Refunds per invoice never exceed the signed amount, and match the ghost totals.
    function invariant_refundsNeverExceedPayment() public view {
        assertEq(handler.ghostOverRefunds(), 0, "over-refund accepted");
        uint256 n = handler.settledCount();
        for (uint256 i; i < n; ++i) {
            uint256 id = handler.settledIds(i);
            uint256 refunded = router.refundedOf(merchant, id);
            assertLe(refunded, handler.paidAmount(id), "refund <= paid");
            assertEq(refunded, handler.ghostRefundedOf(id), "refund total");
        }
    }
}
