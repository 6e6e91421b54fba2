// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {PaymentRouter, PaymentIntent, PermitData} from "../../contracts/src/PaymentRouter.sol";
import {FeeOnTransferToken} from "../../contracts/src/mocks/FeeOnTransferToken.sol";
import {ReentrantToken} from "../../contracts/src/mocks/ReentrantToken.sol";
import {RouterFixture} from "./utils/RouterFixture.sol";

contract PaymentRouterTest is RouterFixture {
    function _structHash(PaymentIntent memory intent) internal pure returns (bytes32) {
        return keccak256(abi.encode(INTENT_TYPEHASH, intent));
    }

    uint256 internal constant AMOUNT = 25_000_000; // 25 tUSD
    uint256 internal constant FEE = 250_000;

    // ------------------------------------------------------------------ deployment and admin

    function test_constructor_setsOwnerAndTreasury() public view {
        assertEq(router.owner(), owner, "owner");
        assertEq(router.treasury(), treasury, "treasury");
        assertFalse(router.paused(), "paused");
    }

    function test_constructor_emitsTreasuryChanged() public {
        vm.expectEmit();
        emit PaymentRouter.TreasuryChanged(address(0), treasury);
        new PaymentRouter(owner, treasury, PAUSE_BOND);
    }

    function test_constructor_revertsOnZeroTreasury() public {
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        new PaymentRouter(owner, address(0), PAUSE_BOND);
    }

    function test_constructor_revertsOnZeroPauseBond() public {
        vm.expectRevert(PaymentRouter.ZeroPauseBond.selector);
        new PaymentRouter(owner, treasury, 0);
    }

    function test_constructor_revertsOnZeroOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableInvalidOwner.selector, address(0)));
        new PaymentRouter(address(0), treasury, PAUSE_BOND);
    }

    function test_setTreasury_changesAndEmits() public {
        vm.expectEmit(address(router));
        emit PaymentRouter.TreasuryChanged(treasury, address(0xBEEF));
        vm.prank(owner);
        router.setTreasury(address(0xBEEF));
        assertEq(router.treasury(), address(0xBEEF), "treasury");
        assertFalse(router.paused(), "pause untouched");
    }

    function test_setTreasury_revertsForNonOwner() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        router.setTreasury(address(0xBEEF));
    }

    function test_setTreasury_revertsOnZero() public {
        vm.prank(owner);
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        router.setTreasury(address(0));
    }

    function test_pause_blocksPayAndUnpauseRestores() public {
        vm.expectEmit(address(router));
        emit Pausable.Paused(owner);
        _pauseRouter();
        assertTrue(router.paused(), "paused");
        assertEq(router.treasury(), treasury, "treasury untouched");

        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        router.pay(intent, r, vs);

        vm.expectEmit(address(router));
        emit Pausable.Unpaused(owner);
        vm.prank(owner);
        router.unpause();
        vm.prank(payer);
        router.pay(intent, r, vs);
        assertTrue(router.isSettled(merchant, 1), "settled after unpause");
    }

    /// @dev The pause state is the router's ETH balance (>= the 10 ether bond); storage is untouched.
    function test_pause_isTheBondBalance() public {
        bytes32 slot4 = vm.load(address(router), bytes32(uint256(4)));
        vm.deal(owner, 20 ether);
        vm.prank(owner);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.PauseBondRequired.selector, 10 ether, 10 ether - 1));
        router.pause{value: 10 ether - 1}();
        vm.prank(owner);
        router.pause{value: 10 ether}();
        assertTrue(router.paused(), "paused");
        assertEq(vm.load(address(router), bytes32(uint256(4))), slot4, "storage untouched");
        vm.prank(owner);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        router.pause{value: 1}();
        vm.prank(owner);
        router.unpause();
        assertFalse(router.paused(), "unpaused");
        assertEq(address(router).balance, 0, "bond returned");
        assertEq(owner.balance, 20 ether, "owner refunded");
    }

    /// @dev Force-sent ETH below the bond does not pause; a forced full bond pauses (and is the owner's on unpause).
    function test_pause_forceSentEth() public {
        vm.deal(address(router), 10 ether - 1);
        assertFalse(router.paused(), "dust does not pause");
        _pay(_intent(1, AMOUNT, 0));
        vm.deal(address(router), 10 ether);
        assertTrue(router.paused(), "a forced full bond pauses");
        PaymentIntent memory intent = _intent(2, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        router.pay(intent, r, vs);
        vm.prank(owner);
        router.unpause();
        assertEq(owner.balance, 10 ether, "forced ETH goes to the owner");
        _pay(intent);
    }

    function test_pause_revertsForNonOwner() public {
        vm.deal(address(this), PAUSE_BOND);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        router.pause{value: PAUSE_BOND}();
        _pauseRouter();
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        router.unpause();
    }

    function test_pauseBond_isTheConstructorArgument() public {
        assertEq(router.pauseBond(), PAUSE_BOND, "bond");
        PaymentRouter small = new PaymentRouter(owner, treasury, 1 gwei);
        vm.deal(address(small), 1 gwei);
        assertTrue(small.paused(), "its own bond");
        assertFalse(router.paused(), "not ours");
    }

    function test_sweep_collectsDustOnlyWhileUnpaused() public {
        vm.deal(address(router), 1 ether);
        vm.expectEmit(address(router));
        emit PaymentRouter.Swept(owner, 1 ether);
        vm.prank(owner);
        router.sweep();
        assertEq(address(router).balance, 0, "dust swept");
        assertEq(owner.balance, 1 ether, "to the owner");
        _pauseRouter();
        vm.prank(owner);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        router.sweep(); // the bond leaves only with unpause
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        router.sweep();
    }

    function test_unpause_revertsWhenTheOwnerRefusesEth() public {
        RefusesEth refuser = new RefusesEth();
        PaymentRouter other = new PaymentRouter(address(refuser), treasury, PAUSE_BOND);
        vm.deal(address(other), PAUSE_BOND); // forced pause
        assertTrue(other.paused(), "paused");
        vm.prank(address(refuser));
        vm.expectRevert(PaymentRouter.PauseBondRefundFailed.selector);
        other.unpause();
        assertTrue(other.paused(), "still paused: nothing was sent");
    }

    /// @dev Dust below the bond is not a pause, so it cannot be collected through unpause (sweep does that).
    function test_unpause_revertsWhenNotPaused() public {
        vm.prank(owner);
        vm.expectRevert(Pausable.ExpectedPause.selector);
        router.unpause();
        vm.deal(address(router), PAUSE_BOND - 1);
        vm.prank(owner);
        vm.expectRevert(Pausable.ExpectedPause.selector);
        router.unpause();
        assertEq(address(router).balance, PAUSE_BOND - 1, "dust stays");
        assertFalse(router.paused(), "still unpaused");
    }

    function test_nothingElseAcceptsEth() public {
        vm.deal(address(this), 1 ether);
        (bool ok,) = address(router).call{value: 1 ether}("");
        assertFalse(ok, "plain transfer refused");
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        (ok,) = address(router).call{value: 1}(abi.encodeCall(router.pay, (intent, r, vs)));
        assertFalse(ok, "pay is not payable");
        assertEq(address(router).balance, 0, "no ETH in");
    }

    function test_ownership_transfersInTwoSteps() public {
        vm.prank(owner);
        router.transferOwnership(address(0xD00D));
        assertEq(router.owner(), owner, "still owner until accepted");
        vm.prank(address(0xD00D));
        router.acceptOwnership();
        assertEq(router.owner(), address(0xD00D), "new owner");
    }

    function test_renounceOwnership_isDisabled() public {
        vm.prank(owner);
        vm.expectRevert(PaymentRouter.RenounceDisabled.selector);
        router.renounceOwnership();
        assertEq(router.owner(), owner, "still owned");
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        router.renounceOwnership();
    }

    function test_theRouterIsNeverARecipient() public {
        vm.expectRevert(PaymentRouter.RouterAsRecipient.selector);
        new PaymentRouter(owner, vm.computeCreateAddress(address(this), vm.getNonce(address(this))), PAUSE_BOND);
        vm.prank(owner);
        vm.expectRevert(PaymentRouter.RouterAsRecipient.selector);
        router.setTreasury(address(router));
        vm.prank(address(0x4242));
        vm.expectRevert(PaymentRouter.RouterAsRecipient.selector);
        router.registerMerchant(address(router), operator);
        vm.prank(merchant);
        vm.expectRevert(PaymentRouter.RouterAsRecipient.selector);
        router.setPayout(address(router));
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, false);
        vm.prank(merchant);
        vm.expectRevert(PaymentRouter.RouterAsRecipient.selector);
        router.refund(intent, r, vs, address(router), 1e6);
        assertEq(router.treasury(), treasury, "treasury unchanged");
        (address p,) = router.merchantOf(merchant);
        assertEq(p, payout, "payout unchanged");
    }

    // ------------------------------------------------------------------ merchants

    function test_registerMerchant_storesAndEmits() public {
        address m = address(0x4242);
        vm.expectEmit(address(router));
        emit PaymentRouter.MerchantRegistered(m, address(0x1), address(0x2));
        vm.prank(m);
        router.registerMerchant(address(0x1), address(0x2));
        (address p, address o) = router.merchantOf(m);
        assertEq(p, address(0x1), "payout");
        assertEq(o, address(0x2), "operator");
    }

    function test_registerMerchant_revertsWhenRegistered() public {
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.MerchantAlreadyRegistered.selector, merchant));
        router.registerMerchant(payout, operator);
    }

    function test_registerMerchant_revertsOnZeroAddresses() public {
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        router.registerMerchant(address(0), operator);
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        router.registerMerchant(payout, address(0));
    }

    function test_merchantOf_unknownIsZero() public view {
        (address p, address o) = router.merchantOf(address(0xDEAD));
        assertEq(p, address(0), "payout");
        assertEq(o, address(0), "operator");
    }

    function test_setPayout_redirectsPayments() public {
        address newPayout = address(0x9A8);
        vm.expectEmit(address(router));
        emit PaymentRouter.PayoutChanged(merchant, payout, newPayout);
        vm.prank(merchant);
        router.setPayout(newPayout);
        (address p,) = router.merchantOf(merchant);
        assertEq(p, newPayout, "payout");

        _pay(_intent(7, AMOUNT, 0));
        assertEq(token.balanceOf(newPayout), AMOUNT, "new payout paid");
        assertEq(token.balanceOf(payout), 0, "old payout not paid");
    }

    function test_setPayout_revertsForUnregistered() public {
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.MerchantNotRegistered.selector, address(this)));
        router.setPayout(address(0x1));
    }

    function test_setPayout_revertsOnZero() public {
        vm.prank(merchant);
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        router.setPayout(address(0));
    }

    function test_setOperator_rotatesSigner() public {
        uint256 newKey = 0xC0FFEE;
        address newOperator = vm.addr(newKey);
        vm.expectEmit(address(router));
        emit PaymentRouter.OperatorChanged(merchant, operator, newOperator);
        vm.prank(merchant);
        router.setOperator(newOperator);
        (address p, address o) = router.merchantOf(merchant);
        assertEq(o, newOperator, "operator");
        assertEq(p, payout, "payout kept");

        PaymentIntent memory intent = _intent(3, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, operator));
        router.pay(intent, r, vs);

        (r, vs) = _sign(newKey, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);
        assertEq(token.balanceOf(payout), AMOUNT, "paid with new operator");
    }

    function test_setOperator_revertsForUnregistered() public {
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.MerchantNotRegistered.selector, address(this)));
        router.setOperator(address(0x1));
    }

    function test_setOperator_revertsOnZero() public {
        vm.prank(merchant);
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        router.setOperator(address(0));
    }

    /// @dev A -> B -> A revived every intent A signed before the first rotation (payments and refunds).
    function test_setOperator_refusesAKeyUsedBefore() public {
        PaymentIntent memory intent = _intent(5, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent); // signed by A, then A is retired
        address b = vm.addr(0xB0B0);
        vm.prank(merchant);
        router.setOperator(b);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.OperatorAlreadyUsed.selector, operator));
        router.setOperator(operator);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.OperatorAlreadyUsed.selector, b));
        router.setOperator(b); // the current one: no rotation at all
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, operator));
        router.pay(intent, r, vs);
    }

    /// @dev Retirement is per merchant: another merchant may use a key this one gave up.
    function test_setOperator_retiresAKeyForItsMerchantOnly() public {
        address other = address(0x07E4);
        vm.prank(other);
        router.registerMerchant(payout, address(0xC1));
        vm.prank(merchant);
        router.setOperator(address(0xC2));
        vm.prank(other);
        router.setOperator(operator); // the key the first merchant retired
        (, address o) = router.merchantOf(other);
        assertEq(o, operator, "other merchant's operator");
    }

    // ------------------------------------------------------------------ hashing

    function test_hashIntent_matchesIndependentEip712() public view {
        PaymentIntent memory intent = _intent(42, AMOUNT, FEE);
        intent.payer = payer;
        assertEq(router.hashIntent(intent), _digest(intent), "digest");
    }

    function test_eip712Domain_nameAndVersion() public view {
        (, string memory name, string memory version, uint256 chainId, address verifying,,) = router.eip712Domain();
        assertEq(keccak256(bytes(name)), keccak256("FollowPay PaymentRouter"), "name");
        assertEq(keccak256(bytes(version)), keccak256("1"), "version");
        assertEq(chainId, block.chainid, "chain id");
        assertEq(verifying, address(router), "verifying contract");
    }

    // ------------------------------------------------------------------ pay: success

    function test_pay_noFee_movesExactAmountAndEmits() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.expectEmit(address(router));
        emit PaymentRouter.PaymentSettled(merchant, 1, payer, _structHash(_intent(1, AMOUNT, 0)));
        vm.prank(payer);
        router.pay(intent, r, vs);
        assertEq(token.balanceOf(payout), AMOUNT, "payout");
        assertEq(token.balanceOf(treasury), 0, "treasury");
        assertEq(token.balanceOf(payer), START_BALANCE - AMOUNT, "payer");
        assertEq(token.balanceOf(address(router)), 0, "router holds nothing");
        assertTrue(router.isSettled(merchant, 1), "settled");
        assertFalse(router.isSettled(merchant, 0), "neighbour not settled");
        assertFalse(router.isSettled(merchant, 2), "neighbour not settled");
    }

    function test_pay_withFee_splitsBetweenPayoutAndTreasury() public {
        PaymentIntent memory intent = _intent(2, AMOUNT, FEE);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.expectEmit(address(router));
        emit PaymentRouter.PaymentSettled(merchant, 2, payer, _structHash(_intent(2, AMOUNT, FEE)));
        vm.prank(payer);
        router.pay(intent, r, vs);
        assertEq(token.balanceOf(payout), AMOUNT - FEE, "payout");
        assertEq(token.balanceOf(treasury), FEE, "treasury");
        assertEq(token.balanceOf(payer), START_BALANCE - AMOUNT, "payer");
    }

    function test_pay_feeEqualToAmount_allToTreasury() public {
        _pay(_intent(3, AMOUNT, AMOUNT));
        assertEq(token.balanceOf(payout), 0, "payout");
        assertEq(token.balanceOf(treasury), AMOUNT, "treasury");
    }

    function test_pay_zeroAmount_settlesWithoutTransfer() public {
        _pay(_intent(4, 0, 0));
        assertTrue(router.isSettled(merchant, 4), "settled");
        assertEq(token.balanceOf(payer), START_BALANCE, "payer");
    }

    function test_pay_deadlineIsInclusive() public {
        PaymentIntent memory intent = _intent(5, AMOUNT, 0);
        intent.deadline = block.timestamp;
        _pay(intent);
        assertTrue(router.isSettled(merchant, 5), "settled at the deadline");
    }

    function test_pay_boundPayer() public {
        PaymentIntent memory intent = _intent(6, AMOUNT, 0);
        intent.payer = payer;
        _pay(intent);
        assertTrue(router.isSettled(merchant, 6), "settled");
    }

    function test_pay_anyoneMayPayOpenIntent() public {
        address stranger = address(0x5757);
        vm.prank(owner);
        token.mint(stranger, AMOUNT);
        vm.prank(stranger);
        token.approve(address(router), AMOUNT);
        PaymentIntent memory intent = _intent(8, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(stranger);
        router.pay(intent, r, vs);
        assertEq(token.balanceOf(stranger), 0, "stranger paid");
    }

    function test_pay_bitmapWordBoundaries() public {
        uint256[6] memory ids = [uint256(0), 255, 256, 511, 512, type(uint256).max];
        for (uint256 i; i < ids.length; ++i) {
            _pay(_intent(ids[i], 1e6, 0));
        }
        for (uint256 i; i < ids.length; ++i) {
            assertTrue(router.isSettled(merchant, ids[i]), "settled");
        }
        assertFalse(router.isSettled(merchant, 1), "1");
        assertFalse(router.isSettled(merchant, 254), "254");
        assertFalse(router.isSettled(merchant, 257), "257");
        assertFalse(router.isSettled(merchant, type(uint256).max - 1), "max - 1");
    }

    function _expectAlreadySettled(uint256 invoiceId) internal {
        PaymentIntent memory intent = _intent(invoiceId, 1e6, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvoiceAlreadySettled.selector, merchant, invoiceId));
        router.pay(intent, r, vs);
    }

    /// @dev Sequential ids settle in the record's 64-id window; an id beyond it writes the window back to the
    /// bitmap and moves it; late ids behind the window use the bitmap. Replays are refused in every case.
    function test_pay_windowMovesForwardAndLatePaymentsUseBitmap() public {
        for (uint256 id; id < 4; ++id) {
            _pay(_intent(id, 1e6, 0));
        }
        _pay(_intent(64, 1e6, 0)); // moves the window to 64..127, writing 0..3 back
        _pay(_intent(5, 1e6, 0)); // behind the window
        _pay(_intent(63, 1e6, 0)); // behind the window, same bitmap word
        _pay(_intent(300, 1e6, 0)); // jumps ahead two words
        _pay(_intent(65, 1e6, 0)); // behind again

        uint256[9] memory settled = [uint256(0), 1, 2, 3, 5, 63, 64, 65, 300];
        for (uint256 i; i < settled.length; ++i) {
            assertTrue(router.isSettled(merchant, settled[i]), "settled");
            _expectAlreadySettled(settled[i]);
        }
        uint256[7] memory open = [uint256(4), 6, 62, 66, 127, 299, 301];
        for (uint256 i; i < open.length; ++i) {
            assertFalse(router.isSettled(merchant, open[i]), "open");
        }
        _pay(_intent(4, 1e6, 0)); // still payable
        assertTrue(router.isSettled(merchant, 4), "4");
    }

    function test_pay_firstPaymentAheadOfEmptyWindow() public {
        _pay(_intent(1000, 1e6, 0));
        _pay(_intent(0, 1e6, 0));
        assertTrue(router.isSettled(merchant, 1000), "1000");
        assertTrue(router.isSettled(merchant, 0), "0");
        _expectAlreadySettled(1000);
        _expectAlreadySettled(0);
    }

    function test_pay_idsBeyondWindowRangeUseBitmap() public {
        uint256 huge = 1 << 40; // id >> 6 does not fit the record's 32-bit window
        _pay(_intent(1, 1e6, 0));
        _pay(_intent(huge, 1e6, 0));
        _pay(_intent(2, 1e6, 0)); // the window did not move
        assertTrue(router.isSettled(merchant, huge), "huge");
        assertFalse(router.isSettled(merchant, huge + 1), "huge + 1");
        _expectAlreadySettled(huge);
        _expectAlreadySettled(1);
        _expectAlreadySettled(2);
    }

    function test_setOperator_keepsSettledInvoices() public {
        _pay(_intent(1, 1e6, 0)); // cached in the record
        _pay(_intent(100, 1e6, 0)); // moves the window: 1 now in the bitmap, 100 cached
        uint256 newKey = 0xC0FFEE;
        vm.prank(merchant);
        router.setOperator(vm.addr(newKey));
        assertTrue(router.isSettled(merchant, 1), "1");
        assertTrue(router.isSettled(merchant, 100), "100");
        uint256[2] memory ids = [uint256(1), 100];
        for (uint256 i; i < 2; ++i) {
            PaymentIntent memory intent = _intent(ids[i], 1e6, 0);
            (bytes32 r, bytes32 vs) = _sign(newKey, intent);
            vm.prank(payer);
            vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvoiceAlreadySettled.selector, merchant, ids[i]));
            router.pay(intent, r, vs);
        }
    }

    function test_setPayout_keepsSettledInvoices() public {
        _pay(_intent(7, 1e6, 0));
        vm.prank(merchant);
        router.setPayout(address(0x9A8));
        (address p,) = router.merchantOf(merchant);
        assertEq(p, address(0x9A8), "payout");
        assertTrue(router.isSettled(merchant, 7), "7");
        _expectAlreadySettled(7);
        _pay(_intent(8, 1e6, 0));
        assertEq(token.balanceOf(address(0x9A8)), 1e6, "new payout paid");
    }

    /// @dev Any order of ids: the router's view equals the set paid, and each replay is refused.
    function testFuzz_pay_anyOrderSettlesEachIdOnce(uint256[8] memory seeds) public {
        uint256[8] memory ids;
        for (uint256 i; i < 8; ++i) {
            uint256 id = seeds[i] % 700;
            bool seen;
            for (uint256 j; j < i; ++j) {
                if (ids[j] == id) seen = true;
            }
            ids[i] = id;
            if (seen) {
                _expectAlreadySettled(id);
            } else {
                assertFalse(router.isSettled(merchant, id), "not yet");
                _pay(_intent(id, 1e6, 0));
            }
            assertTrue(router.isSettled(merchant, id), "settled");
        }
        for (uint256 i; i < 8; ++i) {
            _expectAlreadySettled(ids[i]);
        }
    }

    function test_pay_sameInvoiceIdForDifferentMerchants() public {
        uint256 key2 = 0x5EC0;
        address merchant2 = address(0x3E5D);
        vm.prank(merchant2);
        router.registerMerchant(address(0x9A9), vm.addr(key2));
        _pay(_intent(9, AMOUNT, 0));

        PaymentIntent memory intent = _intent(9, AMOUNT, 0);
        intent.merchant = merchant2;
        (bytes32 r, bytes32 vs) = _sign(key2, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);
        assertTrue(router.isSettled(merchant2, 9), "merchant 2 settled");
        assertEq(token.balanceOf(address(0x9A9)), AMOUNT, "merchant 2 payout");
    }

    function test_pay_tokenReturningNothing() public {
        NoReturnToken t = new NoReturnToken();
        t.mint(payer, AMOUNT);
        vm.prank(payer);
        t.approve(address(router), AMOUNT);
        PaymentIntent memory intent = _intent(10, AMOUNT, 0);
        intent.token = address(t);
        _pay(intent);
        assertEq(t.balanceOf(payout), AMOUNT, "payout");
    }

    // ------------------------------------------------------------------ pay: errors

    function test_pay_revertsWhenExpired() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.warp(intent.deadline + 1);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentRouter.IntentExpired.selector, intent.deadline, intent.deadline + 1)
        );
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForWrongPayer() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.payer = address(0xCAFE);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.PayerMismatch.selector, address(0xCAFE), payer));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsWhenFeeExceedsAmount() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, AMOUNT + 1);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.FeeExceedsAmount.selector, AMOUNT + 1, AMOUNT));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForUnknownMerchant() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.merchant = address(0xDEAD);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.UnknownMerchant.selector, address(0xDEAD)));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForWrongSigner() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(PAYER_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, payer));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsWhenIntentTampered() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, FEE);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        intent.fee = 0; // the payer tries to skip the fee
        vm.prank(payer);
        vm.expectPartialRevert(PaymentRouter.InvalidSigner.selector);
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForSignatureOfOtherRouter() public {
        PaymentRouter other = new PaymentRouter(owner, treasury, PAUSE_BOND);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = vm.signCompact(OPERATOR_KEY, other.hashIntent(intent));
        vm.prank(payer);
        vm.expectPartialRevert(PaymentRouter.InvalidSigner.selector);
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForHighS() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (, bytes32 r,) = vm.sign(OPERATOR_KEY, _digest(intent));
        // EIP-2098 leaves room for s in (n/2, 2^255): such malleable values must recover to nobody, even
        // where plain ecrecover would return an address.
        bytes32 vs = bytes32(HALF_ORDER + 1);
        assertTrue(ecrecover(_digest(intent), 27, r, vs) != address(0), "precompile accepts high s");
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, address(0)));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForGarbageSignature() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, address(0)));
        router.pay(intent, bytes32(0), bytes32(0));
    }

    function test_pay_revertsWhenAlreadySettled() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        _pay(intent);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvoiceAlreadySettled.selector, merchant, 1));
        router.pay(intent, r, vs);

        // A second, differently priced intent for the same invoice is refused too.
        PaymentIntent memory cheaper = _intent(1, 1, 0);
        (r, vs) = _sign(OPERATOR_KEY, cheaper);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvoiceAlreadySettled.selector, merchant, 1));
        router.pay(cheaper, r, vs);
    }

    function test_pay_revertsForFeeOnTransferToken() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        fot.mint(payer, AMOUNT);
        fot.mint(payout, 1e6);
        vm.prank(payer);
        fot.approve(address(router), AMOUNT);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.token = address(fot);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(
            abi.encodeWithSelector(
                PaymentRouter.TransferAmountMismatch.selector, address(fot), AMOUNT, AMOUNT - AMOUNT / 100
            )
        );
        router.pay(intent, r, vs);
        assertFalse(router.isSettled(merchant, 1), "not settled");
    }

    function test_pay_revertsForFeeOnTransferTokenWhenAllIsFee() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        fot.mint(payer, AMOUNT);
        vm.prank(payer);
        fot.approve(address(router), AMOUNT);
        PaymentIntent memory intent = _intent(1, AMOUNT, AMOUNT);
        intent.token = address(fot);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectPartialRevert(PaymentRouter.TransferAmountMismatch.selector);
        router.pay(intent, r, vs);
    }

    function test_pay_revertsWhenPayerIsPayout() public {
        vm.prank(owner);
        token.mint(payout, AMOUNT);
        vm.prank(payout);
        token.approve(address(router), AMOUNT);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payout);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.SelfTransfer.selector, payout));
        router.pay(intent, r, vs);
    }

    function test_pay_bubblesInsufficientAllowance() public {
        address poor = address(0x9009);
        vm.prank(owner);
        token.mint(poor, AMOUNT);
        vm.prank(poor);
        token.approve(address(router), AMOUNT - 1);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(poor);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(router), AMOUNT - 1, AMOUNT
            )
        );
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForFalseReturningToken() public {
        FalseToken t = new FalseToken();
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.token = address(t);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSignature("SafeERC20FailedOperation(address)", address(t)));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForTokenWithoutCode() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.token = address(0x70CE);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(bytes(""));
        router.pay(intent, r, vs);
    }

    function test_pay_revertsForDirtyAddressEncoding() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        bytes memory data = abi.encodeCall(PaymentRouter.pay, (intent, r, vs));
        data[4] = 0x01; // high byte of the merchant word
        vm.prank(payer);
        (bool ok, bytes memory ret) = address(router).call(data);
        assertFalse(ok, "dirty address accepted");
        // No canonical-encoding check any more: the dirty word is a different (unregistered) merchant key, and it is
        // also covered by the signature, so the intent can never be valid.
        assertEq(
            ret,
            abi.encodePacked(PaymentRouter.UnknownMerchant.selector, bytes32(uint256(uint160(merchant)) | (1 << 248))),
            "unknown (dirty) merchant"
        );
    }

    function test_pay_reentrancyIsBlocked() public {
        ReentrantToken rt = new ReentrantToken();
        rt.mint(payer, 2 * AMOUNT);
        vm.prank(payer);
        rt.approve(address(router), 2 * AMOUNT);

        PaymentIntent memory inner = _intent(2, AMOUNT, 0);
        inner.token = address(rt);
        (bytes32 ri, bytes32 vsi) = _sign(OPERATOR_KEY, inner);
        rt.arm(address(router), abi.encodeCall(PaymentRouter.pay, (inner, ri, vsi)));

        PaymentIntent memory outer = _intent(1, AMOUNT, 0);
        outer.token = address(rt);
        _pay(outer);

        assertFalse(rt.lastCallSucceeded(), "re-entrant pay succeeded");
        assertEq(
            rt.lastRevertData(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector),
            "revert reason"
        );
        assertTrue(router.isSettled(merchant, 1), "outer settled");
        assertFalse(router.isSettled(merchant, 2), "inner not settled");
        assertEq(rt.balanceOf(payout), AMOUNT, "only the outer payment moved");
    }

    /// @dev `pay` inlines the guard on ReentrancyGuardTransient's slot: the modifier-guarded functions see it.
    function test_pay_crossFunctionReentrancyIsBlocked() public {
        ReentrantToken rt = new ReentrantToken();
        rt.mint(payer, AMOUNT);
        rt.mint(merchant, AMOUNT);
        vm.prank(payer);
        rt.approve(address(router), AMOUNT);
        vm.prank(merchant);
        rt.approve(address(router), AMOUNT);

        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.token = address(rt);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        // During the payment's transferFrom the token calls refund (as msg.sender = token, so it would fail
        // anyway with NotMerchant: the guard must trip first) and payWithPermit.
        rt.arm(address(router), abi.encodeCall(PaymentRouter.refund, (intent, r, vs, payer, 1)));
        vm.prank(payer);
        router.pay(intent, r, vs);
        assertEq(
            rt.lastRevertData(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector),
            "refund re-entry"
        );

        PaymentIntent memory second = _intent(2, AMOUNT, 0);
        second.token = address(rt);
        (bytes32 r2, bytes32 vs2) = _sign(OPERATOR_KEY, second);
        PermitData memory noPermit;
        rt.arm(address(router), abi.encodeCall(PaymentRouter.payWithPermit, (second, r2, vs2, noPermit)));
        vm.prank(merchant);
        router.refund(intent, r, vs, address(0xF00D), 1);
        assertEq(
            rt.lastRevertData(),
            abi.encodeWithSelector(ReentrancyGuardTransient.ReentrancyGuardReentrantCall.selector),
            "payWithPermit re-entry from refund"
        );
        assertFalse(router.isSettled(merchant, 2), "second not settled");
    }

    // ------------------------------------------------------------------ payWithPermit

    function _permit(uint256 key, uint256 value, uint256 deadline) internal view returns (PermitData memory p) {
        address holder = vm.addr(key);
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                holder,
                address(router),
                value,
                token.nonces(holder),
                deadline
            )
        );
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash));
        (p.v, p.r, p.s) = vm.sign(key, digest);
        p.value = value;
        p.deadline = deadline;
    }

    function _freshPayer() internal returns (uint256 key, address who) {
        key = 0xF2E5;
        who = vm.addr(key);
        vm.prank(owner);
        token.mint(who, AMOUNT);
    }

    function test_payWithPermit_paysWithoutPriorApproval() public {
        (uint256 key, address who) = _freshPayer();
        PaymentIntent memory intent = _intent(1, AMOUNT, FEE);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        PermitData memory p = _permit(key, AMOUNT, block.timestamp + 1 hours);
        vm.expectEmit(address(router));
        emit PaymentRouter.PaymentSettled(merchant, 1, who, _structHash(_intent(1, AMOUNT, FEE)));
        vm.prank(who);
        router.payWithPermit(intent, r, vs, p);
        assertEq(token.balanceOf(who), 0, "payer");
        assertEq(token.balanceOf(payout), AMOUNT - FEE, "payout");
        assertEq(token.balanceOf(treasury), FEE, "treasury");
        assertEq(token.allowance(who, address(router)), 0, "permit fully used");
    }

    function test_payWithPermit_toleratesFrontRunPermit() public {
        (uint256 key, address who) = _freshPayer();
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        PermitData memory p = _permit(key, AMOUNT, block.timestamp + 1 hours);
        // Someone watching the mempool submits the permit first; the router's own permit call then fails.
        token.permit(who, address(router), p.value, p.deadline, p.v, p.r, p.s);
        vm.prank(who);
        router.payWithPermit(intent, r, vs, p);
        assertEq(token.balanceOf(payout), AMOUNT, "paid despite front-run");
    }

    function test_payWithPermit_revertsWhenPermitFailsWithoutAllowance() public {
        (uint256 key, address who) = _freshPayer();
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        PermitData memory p = _permit(key, AMOUNT, block.timestamp + 1 hours);
        p.s = bytes32(uint256(p.s) ^ 1); // broken permit
        vm.prank(who);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentRouter.PermitFailedInsufficientAllowance.selector, address(token), 0, AMOUNT)
        );
        router.payWithPermit(intent, r, vs, p);
    }

    function test_payWithPermit_revertsWhenPermitTooSmall() public {
        (uint256 key, address who) = _freshPayer();
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        PermitData memory p = _permit(key, AMOUNT - 1, block.timestamp + 1 hours);
        vm.prank(who);
        vm.expectRevert(
            abi.encodeWithSelector(
                IERC20Errors.ERC20InsufficientAllowance.selector, address(router), AMOUNT - 1, AMOUNT
            )
        );
        router.payWithPermit(intent, r, vs, p);
    }

    function test_payWithPermit_revertsForBadIntentDespiteValidPermit() public {
        (uint256 key, address who) = _freshPayer();
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(PAYER_KEY, intent);
        PermitData memory p = _permit(key, AMOUNT, block.timestamp + 1 hours);
        vm.prank(who);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, payer));
        router.payWithPermit(intent, r, vs, p);
    }

    function test_payWithPermit_revertsWhenPaused() public {
        (uint256 key, address who) = _freshPayer();
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        PermitData memory p = _permit(key, AMOUNT, block.timestamp + 1 hours);
        _pauseRouter();
        vm.prank(who);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        router.payWithPermit(intent, r, vs, p);
    }

    // ------------------------------------------------------------------ refunds

    function _paidIntent(uint256 invoiceId, bool bound)
        internal
        returns (PaymentIntent memory intent, bytes32 r, bytes32 vs)
    {
        intent = _intent(invoiceId, AMOUNT, FEE);
        if (bound) intent.payer = payer;
        (r, vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);
    }

    function test_refund_partialThenRest() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        uint256 payerBefore = token.balanceOf(payer);

        vm.expectEmit(address(router));
        emit PaymentRouter.PaymentRefunded(merchant, 1, payer, address(token), 10e6, 10e6);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, 10e6);
        assertEq(router.refundedOf(merchant, 1), 10e6, "refunded so far");

        vm.expectEmit(address(router));
        emit PaymentRouter.PaymentRefunded(merchant, 1, payer, address(token), AMOUNT - 10e6, AMOUNT);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, AMOUNT - 10e6);
        assertEq(router.refundedOf(merchant, 1), AMOUNT, "fully refunded");
        assertEq(token.balanceOf(payer), payerBefore + AMOUNT, "payer got everything back");
        assertEq(token.balanceOf(merchant), START_BALANCE - AMOUNT, "pulled from merchant");
    }

    function test_refund_revertsWhenExceedingPayment() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, AMOUNT - 5);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.RefundExceedsPayment.selector, 1, 6, 5));
        router.refund(intent, r, vs, payer, 6);
    }

    function test_refund_smallerIntentAfterLargerRefundReportsZeroRemaining() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, AMOUNT);
        PaymentIntent memory smaller = intent;
        smaller.amount = AMOUNT / 2;
        smaller.fee = 0;
        (bytes32 r2, bytes32 vs2) = _sign(OPERATOR_KEY, smaller);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.RefundExceedsPayment.selector, 1, 1, 0));
        router.refund(smaller, r2, vs2, payer, 1);
    }

    function test_refund_revertsWhenTokenStartsTakingFees() public {
        FeeOnTransferToken fot = new FeeOnTransferToken();
        fot.setFeeBps(0);
        fot.mint(payer, AMOUNT);
        fot.mint(merchant, AMOUNT);
        vm.prank(payer);
        fot.approve(address(router), AMOUNT);
        vm.prank(merchant);
        fot.approve(address(router), AMOUNT);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.token = address(fot);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        router.pay(intent, r, vs);

        fot.setFeeBps(100); // the fee switch is turned on
        vm.prank(merchant);
        vm.expectRevert(
            abi.encodeWithSelector(PaymentRouter.TransferAmountMismatch.selector, address(fot), 1e6, 1e6 - 1e4)
        );
        router.refund(intent, r, vs, address(0xF00D), 1e6);
    }

    function test_refund_afterOperatorRotationNeedsReSignature() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        uint256 newKey = 0xC0FFEE;
        vm.prank(merchant);
        router.setOperator(vm.addr(newKey));

        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, operator));
        router.refund(intent, r, vs, payer, 1e6);

        (r, vs) = _sign(newKey, intent);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, 1e6);
        assertEq(router.refundedOf(merchant, 1), 1e6, "refunded with re-signed intent");
    }

    function test_refund_openIntentToAnyRecipient() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, false);
        vm.prank(merchant);
        router.refund(intent, r, vs, address(0xF00D), 1e6);
        assertEq(token.balanceOf(address(0xF00D)), 1e6, "recipient");
    }

    function test_refund_revertsForNonMerchant() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.NotMerchant.selector, payer, merchant));
        router.refund(intent, r, vs, payer, 1e6);
    }

    function test_refund_revertsWhenNotSettled() public {
        PaymentIntent memory intent = _intent(77, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvoiceNotSettled.selector, merchant, 77));
        router.refund(intent, r, vs, payer, 1e6);
    }

    function test_refund_revertsForRecipientOtherThanBoundPayer() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.RefundRecipientMismatch.selector, payer, address(0xF00D)));
        router.refund(intent, r, vs, address(0xF00D), 1e6);
    }

    function test_refund_revertsForZeroRecipient() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, false);
        vm.prank(merchant);
        vm.expectRevert(PaymentRouter.ZeroAddress.selector);
        router.refund(intent, r, vs, address(0), 1e6);
    }

    function test_refund_revertsForZeroAmount() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        vm.prank(merchant);
        vm.expectRevert(PaymentRouter.ZeroRefund.selector);
        router.refund(intent, r, vs, payer, 0);
    }

    function test_refund_revertsForForgedIntent() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        intent.amount = 10 * AMOUNT; // raise the cap without a signature
        vm.prank(merchant);
        vm.expectPartialRevert(PaymentRouter.InvalidSigner.selector);
        router.refund(intent, r, vs, payer, 2 * AMOUNT);
    }

    function test_refund_revertsWhenPaused() public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        _pauseRouter();
        vm.prank(merchant);
        vm.expectRevert(Pausable.EnforcedPause.selector);
        router.refund(intent, r, vs, payer, 1e6);
    }

    function test_refund_revertsWhenMerchantRefundsItself() public {
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.payer = merchant;
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(merchant);
        router.pay(intent, r, vs);
        vm.prank(merchant);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.SelfTransfer.selector, merchant));
        router.refund(intent, r, vs, merchant, 1e6);
    }

    // ------------------------------------------------------------------ fuzz

    function testFuzz_pay(uint256 amount, uint256 fee, uint256 invoiceId, uint256 ttl, bool bound) public {
        amount = _bound(amount, 0, START_BALANCE);
        fee = _bound(fee, 0, amount);
        ttl = _bound(ttl, 0, 365 days);
        PaymentIntent memory intent = _intent(invoiceId, amount, fee);
        intent.deadline = block.timestamp + ttl;
        if (bound) intent.payer = payer;
        _pay(intent);
        assertEq(token.balanceOf(payout), amount - fee, "payout");
        assertEq(token.balanceOf(treasury), fee, "treasury");
        assertEq(token.balanceOf(payer), START_BALANCE - amount, "payer");
        assertTrue(router.isSettled(merchant, invoiceId), "settled");
        if (invoiceId != 0) assertFalse(router.isSettled(merchant, invoiceId - 1), "below");
        if (invoiceId != type(uint256).max) assertFalse(router.isSettled(merchant, invoiceId + 1), "above");

        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvoiceAlreadySettled.selector, merchant, invoiceId));
        router.pay(intent, r, vs);
    }

    function testFuzz_pay_revertsAfterDeadline(uint256 deadline, uint256 late) public {
        deadline = _bound(deadline, 0, block.timestamp + 365 days);
        late = _bound(late, 1, 365 days);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.deadline = deadline;
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        uint256 now_ = block.timestamp;
        uint256 at = deadline + late;
        at = at > now_ ? at : now_;
        vm.warp(at);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.IntentExpired.selector, deadline, at));
        router.pay(intent, r, vs);
    }

    function testFuzz_pay_revertsForAnyOtherSigner(uint256 key) public {
        key = _bound(key, 1, CURVE_ORDER - 1);
        vm.assume(key != OPERATOR_KEY);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        (bytes32 r, bytes32 vs) = _sign(key, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.InvalidSigner.selector, merchant, vm.addr(key)));
        router.pay(intent, r, vs);
    }

    function testFuzz_pay_revertsForAnyOtherCaller(address caller) public {
        vm.assume(caller != payer);
        PaymentIntent memory intent = _intent(1, AMOUNT, 0);
        intent.payer = payer;
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(caller);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.PayerMismatch.selector, payer, caller));
        router.pay(intent, r, vs);
    }

    function testFuzz_pay_revertsWhenFeeExceedsAmount(uint256 amount, uint256 fee) public {
        amount = _bound(amount, 0, type(uint256).max - 1);
        fee = _bound(fee, amount + 1, type(uint256).max);
        PaymentIntent memory intent = _intent(1, amount, fee);
        (bytes32 r, bytes32 vs) = _sign(OPERATOR_KEY, intent);
        vm.prank(payer);
        vm.expectRevert(abi.encodeWithSelector(PaymentRouter.FeeExceedsAmount.selector, fee, amount));
        router.pay(intent, r, vs);
    }

    function testFuzz_refund_neverExceedsAmount(uint256 first, uint256 second) public {
        (PaymentIntent memory intent, bytes32 r, bytes32 vs) = _paidIntent(1, true);
        first = _bound(first, 1, AMOUNT);
        second = _bound(second, 1, AMOUNT);
        vm.prank(merchant);
        router.refund(intent, r, vs, payer, first);
        vm.prank(merchant);
        if (first + second > AMOUNT) {
            vm.expectRevert(
                abi.encodeWithSelector(PaymentRouter.RefundExceedsPayment.selector, 1, second, AMOUNT - first)
            );
            router.refund(intent, r, vs, payer, second);
            assertEq(router.refundedOf(merchant, 1), first, "unchanged");
        } else {
            router.refund(intent, r, vs, payer, second);
            assertEq(router.refundedOf(merchant, 1), first + second, "total");
        }
        assertLe(router.refundedOf(merchant, 1), AMOUNT, "bounded");
    }
}

/// @dev USDT-style token: `transferFrom` returns nothing.
contract NoReturnToken {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;

    function mint(address to, uint256 amount) external {
        balanceOf[to] += amount;
    }

    function approve(address spender, uint256 amount) external {
        allowance[msg.sender][spender] = amount;
    }

    function transferFrom(address from, address to, uint256 amount) external {
        allowance[from][msg.sender] -= amount;
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
    }
}

/// @dev A token whose `transferFrom` returns false without reverting.
contract FalseToken {
    function balanceOf(address) external pure returns (uint256) {
        return 0;
    }

    function transferFrom(address, address, uint256) external pure returns (bool) {
        return false;
    }
}

/// @dev An owner contract without receive/fallback: the bond cannot be returned to it.
contract RefusesEth {}
