// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {PaymentRouter, PaymentIntent} from "../../../contracts/src/PaymentRouter.sol";
import {TestToken} from "../../../contracts/src/TestToken.sol";
import {Vm} from "../utils/Vm.sol";

/// @notice Drives the router with random payments, replays, refunds and key/payout rotations, keeping ghost
/// sums of everything that should have moved (Solady `test/ERC20.t.sol` style).
contract PaymentRouterHandler {
    Vm private constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));
    uint256 public constant INVOICE_RANGE = 512; // eight 64-id windows, two bitmap words

    PaymentRouter public immutable router;
    TestToken public immutable token;
    address public immutable merchant;
    address public immutable treasury;

    address[3] public payers;
    address[2] public payouts;
    uint256 public operatorKey;
    uint256 private _payoutIndex;

    // ghost state
    uint256 public ghostPaid; // sum of intent.amount over successful payments
    uint256 public ghostNet; // sum of amount - fee
    uint256 public ghostFees;
    uint256 public ghostRefunded;
    uint256 public ghostDoubleSettlements; // must stay 0
    uint256 public ghostOverRefunds; // must stay 0
    uint256 public ghostPayCalls;
    uint256 public ghostReplayAttempts;
    uint256[] public settledIds;
    mapping(uint256 invoiceId => bool) public ghostSettled;
    mapping(uint256 invoiceId => PaymentIntent) private _paidIntent;
    mapping(uint256 invoiceId => uint256) public ghostRefundedOf;

    constructor(PaymentRouter router_, TestToken token_, address merchant_, address treasury_, uint256 operatorKey_) {
        router = router_;
        token = token_;
        merchant = merchant_;
        treasury = treasury_;
        operatorKey = operatorKey_;
        payers = [address(0xA1), address(0xA2), address(0xA3)];
        payouts = [address(0xB1), address(0xB2)];
    }

    function settledCount() external view returns (uint256) {
        return settledIds.length;
    }

    function paidAmount(uint256 invoiceId) external view returns (uint256) {
        return _paidIntent[invoiceId].amount;
    }

    /// @notice Pays (or replays) an invoice from one of the payers.
    function pay(uint256 payerSeed, uint256 amount, uint256 feeSeed, uint256 idSeed, bool bound) external {
        ghostPayCalls++;
        address payer = payers[payerSeed % payers.length];
        // Half of the calls replay an id that already settled; the rest pick any id, in any order, so the
        // cached window moves forward, late payments land behind it and replays hit both stores.
        uint256 invoiceId = (idSeed >> 1) % INVOICE_RANGE;
        if (idSeed & 1 == 1 && settledIds.length != 0) invoiceId = settledIds[(idSeed >> 1) % settledIds.length];
        amount = amount % (token.balanceOf(payer) + 1);
        uint256 fee = amount == 0 ? 0 : feeSeed % (amount / 10 + 1);
        PaymentIntent memory intent = PaymentIntent({
            merchant: merchant,
            token: address(token),
            amount: amount,
            fee: fee,
            invoiceId: invoiceId,
            payer: bound ? payer : address(0),
            deadline: block.timestamp + 1 hours
        });
        (bytes32 r, bytes32 vs) = vm.signCompact(operatorKey, router.hashIntent(intent));
        bool wasSettled = ghostSettled[invoiceId];
        if (wasSettled) ghostReplayAttempts++;
        vm.prank(payer);
        try router.pay(intent, r, vs) {
            if (wasSettled) {
                ghostDoubleSettlements++;
                return;
            }
            ghostSettled[invoiceId] = true;
            settledIds.push(invoiceId);
            _paidIntent[invoiceId] = intent;
            ghostPaid += amount;
            ghostNet += amount - fee;
            ghostFees += fee;
        } catch {}
    }

    /// @notice Refunds part of a settled invoice, sometimes asking for more than is left.
    function refund(uint256 idSeed, uint256 amount) external {
        if (settledIds.length == 0) return;
        uint256 invoiceId = settledIds[idSeed % settledIds.length];
        PaymentIntent memory intent = _paidIntent[invoiceId];
        uint256 remaining = intent.amount - ghostRefundedOf[invoiceId];
        amount = 1 + amount % (remaining + 2); // up to one unit too much
        address to = intent.payer == address(0) ? payers[idSeed % payers.length] : intent.payer;
        (bytes32 r, bytes32 vs) = vm.signCompact(operatorKey, router.hashIntent(intent)); // current operator re-signs
        vm.prank(merchant);
        try router.refund(intent, r, vs, to, amount) {
            if (amount > remaining) ghostOverRefunds++;
            ghostRefundedOf[invoiceId] += amount;
            ghostRefunded += amount;
        } catch {}
    }

    /// @notice Rotates the merchant's operator key.
    function rotateOperator(uint256 keySeed) external {
        uint256 key = 1 + keySeed % 1_000_000;
        address operator = vm.addr(key);
        vm.prank(merchant);
        router.setOperator(operator);
        operatorKey = key;
    }

    /// @notice Moves the merchant's payout to the other payout account.
    function switchPayout() external {
        _payoutIndex = 1 - _payoutIndex;
        address next = payouts[_payoutIndex];
        vm.prank(merchant);
        router.setPayout(next);
    }

    /// @notice Lets time pass.
    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + seconds_ % 1 days);
    }
}
