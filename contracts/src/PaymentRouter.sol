// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @notice A payment request signed (EIP-712) by the merchant's operator key.
/// @param merchant The merchant account (the address that called {PaymentRouter-registerMerchant}).
/// @param token The ERC-20 token the invoice is paid in.
/// @param amount Total amount the payer pays, fee included, in token base units.
/// @param fee Part of `amount` that goes to the treasury (`fee <= amount`).
/// @param invoiceId Per-merchant invoice number; settles at most once.
/// @param payer The only account allowed to pay, or `address(0)` for anyone.
/// @param deadline Last timestamp (inclusive) at which the intent can be paid.
struct PaymentIntent {
    address merchant;
    address token;
    uint256 amount;
    uint256 fee;
    uint256 invoiceId;
    address payer;
    uint256 deadline;
}

/// @notice An EIP-2612 permit signed by the payer for the router.
struct PermitData {
    uint256 value;
    uint256 deadline;
    uint8 v;
    bytes32 r;
    bytes32 s;
}

/**
 * @title PaymentRouter
 * @notice Settles merchant-signed ERC-20 payment intents: the payer pays `amount - fee` to the merchant's
 * registered payout and `fee` to the treasury, in one transaction, at most once per (merchant, invoice id).
 *
 * @dev Gas layout of the payment path (see docs/gas.md for the measured breakdown):
 *
 * - The merchant registry is keyed by (merchant, operator) -> record, so a single cold SLOAD both
 *   authenticates the recovered signer as the merchant's *current* operator and yields the payout.
 *   A second mapping merchant -> operator only serves the admin functions and {merchantOf}.
 * - Settled invoices live in a per-merchant bitmap `_settled[merchant][invoiceId >> 8]` (256 invoices per
 *   word). The record's spare 96 bits cache the bits of the merchant's current 64-invoice window, so with
 *   sequential ids a settlement only rewrites the (already warm) record slot; when an id beyond the window
 *   arrives, the cached bits are written back to their bitmap word and the window moves forward. Late
 *   payments behind the window go to the bitmap directly. See {_isSettled}.
 * - The global pause costs {pay} no storage read: the router is paused exactly while its ETH balance is at
 *   least the pause bond (an immutable). See {pause} for why that is sound.
 * - {pay} inlines {ReentrancyGuardTransient-nonReentrant} on the same transient slot (no function-call glue);
 *   {payWithPermit} and {refund} use the modifier, so every entry point that calls a token shares the guard
 *   (registration, {setPayout}, {setOperator} and the owner's functions call no token and take none).
 * - Exact amounts are enforced by the payout's balance delta; tokens that take a fee on transfer revert.
 *   A payer that is also the payout is rejected ({SelfTransfer}): the delta would be zero.
 *
 * Refunds are bounded by the signed amount without storing anything at payment time: the merchant
 * presents the intent again, signed by its current operator, and the router only stores running totals.
 */
contract PaymentRouter is Ownable2Step, EIP712, ReentrancyGuardTransient, Pausable {
    using SafeERC20 for IERC20;

    /// @dev `keccak256("PaymentIntent(address merchant,address token,uint256 amount,uint256 fee,uint256 invoiceId,address payer,uint256 deadline)")`
    bytes32 private constant _PAYMENT_INTENT_TYPEHASH =
        0x7714d8081cea5144c5828dc5f2d08937d5e6d3353fdcd1d977c754bd66d752a4;

    /// @dev `keccak256("PaymentSettled(address,uint256,address,bytes32)")`
    bytes32 private constant _PAYMENT_SETTLED_EVENT =
        0x18f86e7c70ffb8d383b042b59770ed5ff463f23f99338d85b8a5ac32eef9d86f;

    uint256 private constant _PAYOUT_MASK = (1 << 160) - 1;

    /// @dev {ReentrancyGuardTransient}'s ERC-7201 slot (`openzeppelin.storage.ReentrancyGuard`), named here so that
    /// {pay} can inline the guard; {_reentrancyGuardStorageSlot} returns it, keeping both in step.
    bytes32 private constant _REENTRANCY_GUARD_SLOT =
        0x9b779b17422d0df92223018b32b4d1fa46e071723d6817e2486d003becc55f00;

    /// @dev secp256k1 curve order / 2: signatures with a larger `s` are malleable and rejected.
    uint256 private constant _HALF_CURVE_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    /// @dev Global pause: the router is paused exactly while it holds at least this much ETH ({pause} deposits it,
    /// {unpause} returns it). {pay} checks it with SELFBALANCE (5 gas) instead of a cold SLOAD (2,100).
    uint256 private immutable _pauseBond;

    // EIP-712 domain separator cache of this deployment, read by {_pay} without {EIP712-_domainSeparatorV4}'s call.
    bytes32 private immutable _domainSeparatorCache;
    uint256 private immutable _domainChainId;
    address private immutable _domainThis;

    address private _treasury;

    // merchant => operator => record, non-zero only for the merchant's current operator. A record packs
    //   bits   0..159  payout
    //   bits 160..191  window: invoiceId >> 6 of the 64 invoices cached in this slot
    //   bits 192..255  settled bits of those 64 invoices (write-back cache of `_settled`, see {_pay})
    mapping(address merchant => mapping(address operator => uint256 record)) private _records;

    // merchant => current operator (zero when unregistered).
    mapping(address merchant => address operator) private _operators;

    // merchant => invoiceId >> 8 => bitmap of settled invoices. Written by the assembly in {_pay}, which
    // slither does not see (uninitialized-state false positive).
    // slither-disable-next-line uninitialized-state
    mapping(address merchant => mapping(uint256 word => uint256 bits)) private _settled;

    // merchant => invoiceId => total refunded so far.
    mapping(address merchant => mapping(uint256 invoiceId => uint256 total)) private _refunded;

    // merchant => operator => whether the merchant has used that key before (it never signs again:
    // taken back, it would revive every intent it ever signed). Declared last: {_pay}'s assembly
    // addresses the slots above by number.
    mapping(address merchant => mapping(address operator => bool used)) private _retired;

    /// @notice A merchant registered itself.
    event MerchantRegistered(address indexed merchant, address payout, address operator);
    /// @notice A merchant changed where its payments are paid out.
    event PayoutChanged(address indexed merchant, address previousPayout, address newPayout);
    /// @notice A merchant rotated the key that signs its payment intents.
    event OperatorChanged(address indexed merchant, address previousOperator, address newOperator);
    /// @notice The owner changed the fee recipient.
    event TreasuryChanged(address indexed previousTreasury, address indexed newTreasury);
    /// @notice The owner collected ETH force-sent to the router (below the pause bond).
    event Swept(address indexed to, uint256 amount);
    /// @notice An invoice was paid: `amount - fee` to the merchant's payout, `fee` to the treasury.
    /// `intentHash` is the EIP-712 struct hash of the paid intent ({hashIntent} without the domain): it binds every
    /// signed field (token, amount, fee, payer, deadline) in one word, for an indexer that knows what it signed.
    event PaymentSettled(address indexed merchant, uint256 indexed invoiceId, address indexed payer, bytes32 intentHash);
    /// @notice The merchant refunded `amount` of an invoice; `totalRefunded` is the running total.
    event PaymentRefunded(
        address indexed merchant,
        uint256 indexed invoiceId,
        address indexed to,
        address token,
        uint256 amount,
        uint256 totalRefunded
    );

    /// @notice The intent's deadline has passed.
    error IntentExpired(uint256 deadline, uint256 timestamp);
    /// @notice The intent is restricted to `payer` but was sent by `caller`.
    error PayerMismatch(address payer, address caller);
    /// @notice The fee is larger than the total amount.
    error FeeExceedsAmount(uint256 fee, uint256 amount);
    /// @notice The merchant is not registered.
    error UnknownMerchant(address merchant);
    /// @notice The signature does not recover to the merchant's current operator (`signer` is zero when the
    /// signature itself is invalid).
    error InvalidSigner(address merchant, address signer);
    /// @notice The invoice was already paid.
    error InvoiceAlreadySettled(address merchant, uint256 invoiceId);
    /// @notice The invoice was never paid, so it cannot be refunded.
    error InvoiceNotSettled(address merchant, uint256 invoiceId);
    /// @notice The recipient's balance did not grow by exactly the transferred amount (fee-on-transfer token).
    error TransferAmountMismatch(address token, uint256 expected, uint256 received);
    /// @notice Sender and recipient of a transfer are the same account, so an exact amount cannot be verified.
    error SelfTransfer(address account);
    /// @notice The permit failed and the existing allowance does not cover the payment.
    error PermitFailedInsufficientAllowance(address token, uint256 allowance, uint256 required);
    /// @notice Only the merchant itself may do this.
    error NotMerchant(address caller, address merchant);
    /// @notice `merchant` is already registered.
    error MerchantAlreadyRegistered(address merchant);
    /// @notice The caller is not a registered merchant.
    error MerchantNotRegistered(address account);
    /// @notice Zero address given for a payout, operator, treasury or refund recipient.
    error ZeroAddress();
    /// @notice The router itself named as a payout, treasury or refund recipient: tokens sent there would be stuck.
    error RouterAsRecipient();
    /// @notice Ownership cannot be renounced: without an owner the router could be paused for good.
    error RenounceDisabled();
    /// @notice {setOperator} was given the current operator or one the merchant retired before.
    error OperatorAlreadyUsed(address operator);
    /// @notice The refund recipient must be the payer the intent was restricted to.
    error RefundRecipientMismatch(address payer, address to);
    /// @notice A refund of zero was requested.
    error ZeroRefund();
    /// @notice The refund would take the invoice's refunded total above the signed amount.
    error RefundExceedsPayment(uint256 invoiceId, uint256 requested, uint256 remaining);
    /// @notice The pause bond must be positive.
    error ZeroPauseBond();
    /// @notice The pause deposit is missing: {pause} must leave the router holding `required` wei.
    error PauseBondRequired(uint256 required, uint256 balance);
    /// @notice Sending the router's ETH to the owner failed (the owner must accept ETH).
    error PauseBondRefundFailed();

    /// @param initialOwner The admin (pause, treasury); ownership transfers take two steps.
    /// @param treasury_ The account receiving fees.
    /// @param pauseBond_ Wei the owner deposits to pause (returned on unpause); what a forced pause costs whoever
    /// forces it. Size it per chain: large enough that griefing is expensive, small enough to keep at hand.
    constructor(address initialOwner, address treasury_, uint256 pauseBond_)
        Ownable(initialOwner)
        EIP712("FollowPay PaymentRouter", "1")
    {
        if (treasury_ == address(0)) revert ZeroAddress();
        if (treasury_ == address(this)) revert RouterAsRecipient();
        if (pauseBond_ == 0) revert ZeroPauseBond();
        _treasury = treasury_;
        _pauseBond = pauseBond_;
        _domainSeparatorCache = _domainSeparatorV4();
        _domainChainId = block.chainid;
        _domainThis = address(this);
        emit TreasuryChanged(address(0), treasury_);
    }

    // ------------------------------------------------------------------ merchants

    /// @notice Registers the caller as a merchant paid out to `payout`, with `operator` signing its intents.
    function registerMerchant(address payout, address operator) external {
        if (payout == address(0) || operator == address(0)) revert ZeroAddress();
        if (payout == address(this)) revert RouterAsRecipient();
        if (_operators[msg.sender] != address(0)) revert MerchantAlreadyRegistered(msg.sender);
        _operators[msg.sender] = operator;
        _records[msg.sender][operator] = uint256(uint160(payout));
        emit MerchantRegistered(msg.sender, payout, operator);
    }

    /// @notice Changes the caller's payout account. Merchant only.
    function setPayout(address newPayout) external {
        if (newPayout == address(0)) revert ZeroAddress();
        if (newPayout == address(this)) revert RouterAsRecipient();
        address operator = _requireOperator(msg.sender);
        uint256 record = _records[msg.sender][operator];
        // forge-lint: disable-next-line(unsafe-typecast)
        address previous = address(uint160(record)); // the payout bits
        _records[msg.sender][operator] = (record & ~_PAYOUT_MASK) | uint256(uint160(newPayout));
        emit PayoutChanged(msg.sender, previous, newPayout);
    }

    /// @notice Rotates the caller's operator key; intents signed by the previous operator stop being valid,
    /// for payments and refunds alike, for good: a key the merchant used before is refused. Merchant only.
    function setOperator(address newOperator) external {
        if (newOperator == address(0)) revert ZeroAddress();
        address previous = _requireOperator(msg.sender);
        if (newOperator == previous || _retired[msg.sender][newOperator]) {
            revert OperatorAlreadyUsed(newOperator);
        }
        _retired[msg.sender][previous] = true;
        // The record (payout and cached settled bits) moves to the new operator's key.
        uint256 record = _records[msg.sender][previous];
        delete _records[msg.sender][previous];
        _records[msg.sender][newOperator] = record;
        _operators[msg.sender] = newOperator;
        emit OperatorChanged(msg.sender, previous, newOperator);
    }

    /// @notice The merchant's payout and current operator (both zero when unregistered).
    function merchantOf(address merchant) external view returns (address payout, address operator) {
        operator = _operators[merchant];
        payout = address(uint160(_records[merchant][operator]));
    }

    // ------------------------------------------------------------------ payments

    /// @notice Pays `intent` from the caller's pre-approved balance. `(r, vs)` is the EIP-2098 compact signature
    /// of {hashIntent} by the merchant's current operator.
    /// @dev {_pay} reads the arguments from their fixed calldata offsets; the names document the ABI.
    function pay(PaymentIntent calldata intent, bytes32 r, bytes32 vs) external {
        (intent, r, vs); // read by {_pay} at their fixed offsets
        // {ReentrancyGuardTransient-nonReentrant}, inlined: same transient slot, same error.
        assembly ("memory-safe") {
            if tload(_REENTRANCY_GUARD_SLOT) {
                mstore(0x00, 0x3ee5aeb5) // ReentrancyGuardReentrantCall()
                revert(0x1c, 0x04)
            }
            tstore(_REENTRANCY_GUARD_SLOT, 1)
        }
        _pay();
        assembly ("memory-safe") {
            tstore(_REENTRANCY_GUARD_SLOT, 0)
        }
    }

    /// @notice Like {pay}, but first submits the payer's EIP-2612 `permit` for this router. If the permit call
    /// fails (e.g. someone front-ran it), the payment still goes through when the allowance already covers it.
    function payWithPermit(PaymentIntent calldata intent, bytes32 r, bytes32 vs, PermitData calldata permit)
        external
        nonReentrant
    {
        // The permit only sets the caller's allowance for this router; if the intent turns out to be invalid,
        // the whole transaction reverts, permit included.
        address token = intent.token;
        try IERC20Permit(token)
            .permit(msg.sender, address(this), permit.value, permit.deadline, permit.v, permit.r, permit.s) {
        // Permit accepted: the allowance is now `permit.value`, checked by the transfer itself.
        }
        catch {
            uint256 allowance = IERC20(token).allowance(msg.sender, address(this));
            if (allowance < intent.amount) revert PermitFailedInsufficientAllowance(token, allowance, intent.amount);
        }
        (r, vs); // read by {_pay} at their fixed offsets
        _pay();
    }

    /// @notice Refunds `amount` of a settled invoice to `to`, pulling the tokens from the merchant (the caller,
    /// who must have approved this router). The intent must be signed by the merchant's current operator and
    /// bounds the cumulative refunds; `to` must be the intent's payer when the intent named one.
    function refund(PaymentIntent calldata intent, bytes32 r, bytes32 vs, address to, uint256 amount)
        external
        nonReentrant
        whenNotPaused
    {
        address merchant = intent.merchant;
        if (msg.sender != merchant) revert NotMerchant(msg.sender, merchant);
        uint256 invoiceId = intent.invoiceId;
        if (!_isSettled(merchant, invoiceId)) revert InvoiceNotSettled(merchant, invoiceId);
        address signer = _recover(_hashIntent(intent), r, vs);
        if (_records[merchant][signer] & _PAYOUT_MASK == 0) _revertBadSigner(merchant, signer);
        if (to == address(0)) revert ZeroAddress();
        if (to == address(this)) revert RouterAsRecipient();
        address payer = intent.payer;
        if (payer != address(0) && to != payer) revert RefundRecipientMismatch(payer, to);
        if (amount == 0) revert ZeroRefund();
        uint256 previous = _refunded[merchant][invoiceId];
        uint256 cap = intent.amount;
        // `previous` can exceed this intent's amount when an earlier refund presented a larger re-signed intent.
        uint256 remaining = cap > previous ? cap - previous : 0;
        if (amount > remaining) revert RefundExceedsPayment(invoiceId, amount, remaining);
        uint256 total = previous + amount;
        _refunded[merchant][invoiceId] = total;
        address token = intent.token;
        emit PaymentRefunded(merchant, invoiceId, to, token, amount, total);
        _transferExact(IERC20(token), to, amount);
    }

    /// @notice Whether `merchant`'s invoice `invoiceId` has been paid.
    function isSettled(address merchant, uint256 invoiceId) external view returns (bool) {
        return _isSettled(merchant, invoiceId);
    }

    /// @notice The running total refunded for `merchant`'s invoice `invoiceId`.
    function refundedOf(address merchant, uint256 invoiceId) external view returns (uint256) {
        return _refunded[merchant][invoiceId];
    }

    /// @notice The EIP-712 digest of `intent` that the merchant's operator signs.
    function hashIntent(PaymentIntent calldata intent) external view returns (bytes32) {
        return _hashIntent(intent);
    }

    // ------------------------------------------------------------------ admin

    /// @notice The account receiving fees.
    function treasury() external view returns (address) {
        return _treasury;
    }

    /// @notice Disabled (always reverts): with no owner, anyone could pause the router for good by force-sending
    /// the bond, and nobody could unpause it. Hand ownership over with {transferOwnership} instead.
    function renounceOwnership() public view override onlyOwner {
        revert RenounceDisabled();
    }

    /// @notice Changes the fee recipient. Owner only.
    function setTreasury(address newTreasury) external onlyOwner {
        if (newTreasury == address(0)) revert ZeroAddress();
        if (newTreasury == address(this)) revert RouterAsRecipient();
        address previous = _treasury;
        _treasury = newTreasury;
        emit TreasuryChanged(previous, newTreasury);
    }

    /// @notice Stops payments and refunds. Owner only; send the pause bond ({pauseBond} wei) with the call (or
    /// the difference to it), it is returned by {unpause}.
    /// @dev The pause state is `address(this).balance >= pauseBond`, so {pay} checks it for 5 gas. Sound because
    /// nothing but this function accepts ETH (no receive/fallback; everything else is non-payable) and only
    /// {unpause} and {sweep} send ETH out, both owner-only: the state can be forced one way only. Anyone may pause
    /// by force-sending the whole bond (selfdestruct, block rewards, withdrawals), which they lose to the owner on
    /// unpause; nobody but the owner can unpause. A forced pause emits no event: monitor {paused}.
    function pause() external payable onlyOwner {
        uint256 balance = address(this).balance;
        if (balance - msg.value >= _pauseBond) revert EnforcedPause();
        if (balance < _pauseBond) revert PauseBondRequired(_pauseBond, balance);
        emit Paused(msg.sender);
    }

    /// @notice Resumes payments and refunds, sending the router's whole ETH balance (the bond, plus anything
    /// force-sent) to the owner, which must accept ETH. Owner only.
    function unpause() external onlyOwner whenPaused {
        emit Unpaused(msg.sender);
        _sendBalanceToOwner();
    }

    /// @notice Sends ETH force-sent below the bond to the owner, so that dust never lowers what a forced pause
    /// costs. Owner only, while not paused.
    function sweep() external onlyOwner whenNotPaused {
        emit Swept(msg.sender, address(this).balance);
        _sendBalanceToOwner();
    }

    /// @inheritdoc Pausable
    function paused() public view override returns (bool) {
        return address(this).balance >= _pauseBond;
    }

    /// @notice The wei {pause} deposits; the router is paused while it holds at least this much.
    function pauseBond() external view returns (uint256) {
        return _pauseBond;
    }

    // ------------------------------------------------------------------ internals

    /// @dev The whole payment: validates `intent` and its signature, marks the invoice settled, emits
    /// {PaymentSettled}, then moves `amount - fee` (verified exactly) to the payout and `fee` to the treasury.
    ///
    /// Written in assembly because this is the hot path: fields are read once from calldata, the struct is
    /// hashed in place (no memory copy), ecrecover is called directly, and the signer lookup and the bitmap
    /// update each cost one keccak per mapping level. Reverts carry the same custom errors as the Solidity
    /// code would (the selectors are checked by the unit tests).
    // forge-lint: disable-next-item(block-timestamp)
    function _pay() private {
        bytes32 domainSeparator = _domainSeparatorCache;
        if (block.chainid != _domainChainId || address(this) != _domainThis) domainSeparator = _domainSeparatorV4();
        uint256 pauseBond_ = _pauseBond;
        assembly ("memory-safe") {
            // Both callers take `(PaymentIntent calldata intent, bytes32 r, bytes32 vs, ...)`: the struct is static,
            // so its fields sit at fixed offsets (0x04 + 32 * i), followed by `r` (0xe4) and `vs` (0x104).
            // {Pausable-whenNotPaused}: paused while the balance holds the bond (see {pause}).
            if iszero(lt(selfbalance(), pauseBond_)) {
                mstore(0x00, 0xd93c0665) // EnforcedPause()
                revert(0x1c, 0x04)
            }
            function balanceOf(token, account) -> result {
                mstore(0x00, 0x70a08231) // balanceOf(address)
                mstore(0x20, account)
                if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                    let p := mload(0x40)
                    returndatacopy(p, 0x00, returndatasize())
                    revert(p, returndatasize())
                }
                result := mload(0x00)
            }
            // SafeERC20.safeTransferFrom semantics: bubbles the token's revert reason, accepts tokens that
            // return nothing, rejects `false`.
            function transferFrom(m, token, to, value) {
                mstore(m, shl(224, 0x23b872dd)) // transferFrom(address,address,uint256)
                mstore(add(m, 0x04), caller())
                mstore(add(m, 0x24), to)
                mstore(add(m, 0x44), value)
                // No need to clear 0x00 first: it is only read when the token returned >= 32 bytes.
                let ok := call(gas(), token, 0, m, 0x64, 0x00, 0x20)
                if iszero(and(ok, and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1)))) {
                    if iszero(ok) {
                        returndatacopy(m, 0x00, returndatasize())
                        revert(m, returndatasize())
                    }
                    if iszero(and(iszero(returndatasize()), gt(extcodesize(token), 0))) {
                        mstore(m, shl(224, 0x5274afe7)) // SafeERC20FailedOperation(address)
                        mstore(add(m, 0x04), token)
                        revert(m, 0x24)
                    }
                }
            }
            // transferFrom that reverts unless `to`'s balance grows by exactly `value`.
            function transferExact(m, token, to, value) {
                if eq(caller(), to) {
                    mstore(m, shl(224, 0x514ae315)) // SelfTransfer(address)
                    mstore(add(m, 0x04), to)
                    revert(m, 0x24)
                }
                let before := balanceOf(token, to)
                transferFrom(m, token, to, value)
                let received := sub(balanceOf(token, to), before)
                if iszero(eq(received, value)) {
                    mstore(m, shl(224, 0x541b1c9e)) // TransferAmountMismatch(address,uint256,uint256)
                    mstore(add(m, 0x04), token)
                    mstore(add(m, 0x24), value)
                    mstore(add(m, 0x44), received)
                    revert(m, 0x64)
                }
            }

            let merchant := calldataload(0x04)
            let invoiceId := calldataload(0x84)
            let m := mload(0x40)
            {
                let payer := calldataload(0xa4)
                let deadline := calldataload(0xc4)
                if gt(timestamp(), deadline) {
                    mstore(m, shl(224, 0x6f08ee6e)) // IntentExpired(uint256,uint256)
                    mstore(add(m, 0x04), deadline)
                    mstore(add(m, 0x24), timestamp())
                    revert(m, 0x44)
                }
                if payer {
                    if iszero(eq(payer, caller())) {
                        mstore(m, shl(224, 0x35b13a39)) // PayerMismatch(address,address)
                        mstore(add(m, 0x04), payer)
                        mstore(add(m, 0x24), caller())
                        revert(m, 0x44)
                    }
                }
                let amount := calldataload(0x44)
                let fee := calldataload(0x64)
                if gt(fee, amount) {
                    mstore(m, shl(224, 0x5534f9b3)) // FeeExceedsAmount(uint256,uint256)
                    mstore(add(m, 0x04), fee)
                    mstore(add(m, 0x24), amount)
                    revert(m, 0x44)
                }
            }

            // digest = keccak256("\x19\x01" ‖ domainSeparator ‖ structHash), structHash = keccak256(TYPEHASH ‖ intent)
            mstore(m, _PAYMENT_INTENT_TYPEHASH)
            calldatacopy(add(m, 0x20), 0x04, 0xe0)
            let structHash := keccak256(m, 0x100)
            let signer := 0
            {
                mstore(add(m, 0x40), structHash)
                mstore(add(m, 0x20), domainSeparator)
                mstore(m, 0x1901)
                let digest := keccak256(add(m, 0x1e), 0x42)
                // EIP-2098: vs = (v - 27) << 255 | s. High-s (malleable) signatures recover to zero.
                let vs := calldataload(0x104)
                let s := shr(1, shl(1, vs))
                if iszero(gt(s, _HALF_CURVE_ORDER)) {
                    mstore(m, digest)
                    mstore(add(m, 0x20), add(shr(255, vs), 27))
                    mstore(add(m, 0x40), calldataload(0xe4))
                    mstore(add(m, 0x60), s)
                    mstore(0x00, 0) // ecrecover returns nothing on failure
                    pop(staticcall(gas(), 0x01, m, 0x80, 0x00, 0x20))
                    signer := mload(0x00)
                }
            }
            let payout
            {
                // record = _records[merchant][signer]: zero unless signer is the merchant's current operator
                // (the zero address never is, so a failed recovery needs no separate check).
                mstore(0x00, merchant)
                mstore(0x20, _records.slot)
                mstore(0x20, keccak256(0x00, 0x40))
                mstore(0x00, signer)
                let recordSlot := keccak256(0x00, 0x40)
                let record := sload(recordSlot)
                payout := and(record, _PAYOUT_MASK)
                if iszero(payout) {
                    let mem := mload(0x40)
                    mstore(0x00, merchant)
                    mstore(0x20, _operators.slot)
                    if iszero(sload(keccak256(0x00, 0x40))) {
                        mstore(mem, shl(224, 0x7efcc6fa)) // UnknownMerchant(address)
                        mstore(add(mem, 0x04), merchant)
                        revert(mem, 0x24)
                    }
                    mstore(mem, shl(224, 0x7ba5ffb5)) // InvalidSigner(address,address)
                    mstore(add(mem, 0x04), merchant)
                    mstore(add(mem, 0x24), signer)
                    revert(mem, 0x44)
                }
                let window := and(shr(160, record), 0xffffffff)
                let group := shr(6, invoiceId)
                let alreadySettled := 0
                switch eq(group, window)
                case 1 {
                    // In the cached window: the record slot is already warm, one more SSTORE and done.
                    // slither-disable-next-line incorrect-shift
                    let bit := shl(add(192, and(invoiceId, 63)), 1)
                    alreadySettled := and(record, bit)
                    sstore(recordSlot, or(record, bit))
                }
                default {
                    switch and(gt(group, window), lt(group, 0x100000000))
                    case 1 {
                        // Ahead of the window: nothing about these ids was ever written (the window only moves
                        // forward and ids behind it go to the bitmap), so write the cached bits back to their
                        // bitmap word and move the window here.
                        let cached := shr(192, record)
                        if cached {
                            mstore(0x00, merchant)
                            mstore(0x20, _settled.slot)
                            mstore(0x20, keccak256(0x00, 0x40))
                            mstore(0x00, shr(2, window))
                            let wordSlot := keccak256(0x00, 0x40)
                            sstore(wordSlot, or(sload(wordSlot), shl(shl(6, and(window, 3)), cached)))
                        }
                        // slither-disable-next-line incorrect-shift
                        sstore(recordSlot, or(or(payout, shl(160, group)), shl(add(192, and(invoiceId, 63)), 1)))
                    }
                    default {
                        // Behind the window (a late payment) or beyond the window's 32-bit range: the bitmap.
                        mstore(0x00, merchant)
                        mstore(0x20, _settled.slot)
                        mstore(0x20, keccak256(0x00, 0x40))
                        mstore(0x00, shr(8, invoiceId))
                        let wordSlot := keccak256(0x00, 0x40)
                        let bits := sload(wordSlot)
                        // slither-disable-next-line incorrect-shift
                        let bit := shl(and(invoiceId, 0xff), 1)
                        alreadySettled := and(bits, bit)
                        sstore(wordSlot, or(bits, bit))
                    }
                }
                if alreadySettled {
                    let mem := mload(0x40)
                    mstore(mem, shl(224, 0x17f28b20)) // InvoiceAlreadySettled(address,uint256)
                    mstore(add(mem, 0x04), merchant)
                    mstore(add(mem, 0x24), invoiceId)
                    revert(mem, 0x44)
                }
            }

            // emit PaymentSettled(merchant, invoiceId, msg.sender, intentHash): the struct hash binds the terms
            mstore(m, structHash)
            log4(m, 0x20, _PAYMENT_SETTLED_EVENT, merchant, invoiceId, caller())

            // Collect: `amount - fee` to the payout, verified exactly, then `fee` to the treasury (its balance
            // delta is checked only when the whole amount is fee; see docs/security.md).
            let token := calldataload(0x24)
            let fee := calldataload(0x64)
            let net := sub(calldataload(0x44), fee) // fee <= amount was checked above
            switch iszero(net)
            case 0 {
                // transferExact(m, token, payout, net), inlined (no Yul function-call glue on the hot path).
                if eq(caller(), payout) {
                    mstore(m, shl(224, 0x514ae315)) // SelfTransfer(address)
                    mstore(add(m, 0x04), payout)
                    revert(m, 0x24)
                }
                mstore(0x00, 0x70a08231) // balanceOf(address)
                mstore(0x20, payout)
                if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                    returndatacopy(m, 0x00, returndatasize())
                    revert(m, returndatasize())
                }
                let before := mload(0x00)
                mstore(m, shl(224, 0x23b872dd)) // transferFrom(address,address,uint256)
                mstore(add(m, 0x04), caller())
                mstore(add(m, 0x24), payout)
                mstore(add(m, 0x44), net)
                {
                    let ok := call(gas(), token, 0, m, 0x64, 0x00, 0x20)
                    if iszero(and(ok, and(gt(returndatasize(), 0x1f), eq(mload(0x00), 1)))) {
                        if iszero(ok) {
                            returndatacopy(m, 0x00, returndatasize())
                            revert(m, returndatasize())
                        }
                        if iszero(and(iszero(returndatasize()), gt(extcodesize(token), 0))) {
                            mstore(m, shl(224, 0x5274afe7)) // SafeERC20FailedOperation(address)
                            mstore(add(m, 0x04), token)
                            revert(m, 0x24)
                        }
                    }
                }
                mstore(0x00, 0x70a08231) // balanceOf(address)
                mstore(0x20, payout)
                if iszero(and(gt(returndatasize(), 0x1f), staticcall(gas(), token, 0x1c, 0x24, 0x00, 0x20))) {
                    returndatacopy(m, 0x00, returndatasize())
                    revert(m, returndatasize())
                }
                let received := sub(mload(0x00), before)
                if iszero(eq(received, net)) {
                    mstore(m, shl(224, 0x541b1c9e)) // TransferAmountMismatch(address,uint256,uint256)
                    mstore(add(m, 0x04), token)
                    mstore(add(m, 0x24), net)
                    mstore(add(m, 0x44), received)
                    revert(m, 0x64)
                }
                if fee {
                    let treasury := and(shr(shl(3, _treasury.offset), sload(_treasury.slot)), _PAYOUT_MASK)
                    transferFrom(m, token, treasury, fee)
                }
            }
            default {
                if fee {
                    let treasury := and(shr(shl(3, _treasury.offset), sload(_treasury.slot)), _PAYOUT_MASK)
                    transferExact(m, token, treasury, fee)
                }
            }
        }
    }

    /// @dev `token.safeTransferFrom(msg.sender, to, value)` that reverts unless `to`'s balance grows by exactly
    /// `value` (fee-on-transfer tokens). Used by {refund}; {_pay} has the same logic inlined in assembly.
    /// `msg.sender == to` is rejected: the balance would not move at all.
    function _transferExact(IERC20 token, address to, uint256 value) private {
        if (msg.sender == to) revert SelfTransfer(to);
        uint256 before = token.balanceOf(to);
        token.safeTransferFrom(msg.sender, to, value);
        uint256 received;
        unchecked {
            received = token.balanceOf(to) - before;
        }
        if (received != value) revert TransferAmountMismatch(address(token), value, received);
    }

    /// @dev The EIP-712 digest of `intent`; the struct is hashed straight from calldata.
    function _hashIntent(PaymentIntent calldata intent) private view returns (bytes32) {
        bytes32 structHash;
        bytes32 typehash = _PAYMENT_INTENT_TYPEHASH;
        assembly ("memory-safe") {
            let fmp := mload(0x40)
            mstore(fmp, typehash)
            calldatacopy(add(fmp, 0x20), intent, 0xe0)
            structHash := keccak256(fmp, 0x100)
        }
        return _hashTypedDataV4(structHash);
    }

    /// @dev Recovers the signer of `digest` from an EIP-2098 compact signature; zero when invalid or malleable.
    function _recover(bytes32 digest, bytes32 r, bytes32 vs) private view returns (address signer) {
        assembly ("memory-safe") {
            let s := shr(1, shl(1, vs))
            if iszero(gt(s, _HALF_CURVE_ORDER)) {
                let fmp := mload(0x40)
                mstore(fmp, digest)
                mstore(add(fmp, 0x20), add(shr(255, vs), 27))
                mstore(add(fmp, 0x40), r)
                mstore(add(fmp, 0x60), s)
                // ecrecover returns no data on failure, leaving the zeroed scratch word in place.
                mstore(0x00, 0)
                pop(staticcall(gas(), 0x01, fmp, 0x80, 0x00, 0x20))
                signer := mload(0x00)
            }
        }
    }

    /// @inheritdoc ReentrancyGuardTransient
    function _reentrancyGuardStorageSlot() internal pure override returns (bytes32) {
        return _REENTRANCY_GUARD_SLOT;
    }

    /// @dev Settled invoices live in the per-merchant bitmap `_settled[merchant][invoiceId >> 8]` (bit
    /// `invoiceId & 0xff`), except for the 64 ids of the merchant's current window (`invoiceId >> 6 == window`),
    /// whose bits sit in the merchant's registry record until the window moves forward and writes them back.

    function _isSettled(address merchant, uint256 invoiceId) private view returns (bool) {
        uint256 record = _records[merchant][_operators[merchant]];
        // forge-lint: disable-next-line(unsafe-typecast)
        if (invoiceId >> 6 == uint32(record >> 160)) {
            return (record >> (192 + (invoiceId & 63))) & 1 != 0;
        }
        // forge-lint: disable-next-line(incorrect-shift)
        return _settled[merchant][invoiceId >> 8] & (1 << (invoiceId & 0xff)) != 0;
    }

    function _sendBalanceToOwner() private {
        // slither-disable-next-line arbitrary-send-eth,low-level-calls (the owner, by onlyOwner callers)
        (bool ok,) = payable(msg.sender).call{value: address(this).balance}("");
        if (!ok) revert PauseBondRefundFailed();
    }

    function _requireOperator(address merchant) private view returns (address operator) {
        operator = _operators[merchant];
        if (operator == address(0)) revert MerchantNotRegistered(merchant);
    }

    function _revertBadSigner(address merchant, address signer) private view {
        if (_operators[merchant] == address(0)) revert UnknownMerchant(merchant);
        revert InvalidSigner(merchant, signer);
    }
}
