"""Proof that a merchant controls its router address, and reclaiming an address another
merchant recorded first.

Recording an account already requires the router's registration to match (only the address's
owner can make it), but a merchant who copies that exact registration here first blocks the
owner. The owner proves control with an EIP-191 ``personal_sign`` of :func:`link_message` by the
address itself: the text names the merchant it links to, the chain and an expiry, so a proof
cannot be replayed for another merchant, another chain or after it lapses. A valid proof moves
the record holding the address to the prover, who must not have an account on that chain yet.
The record moves rather than being deleted: it keeps its id and its invoice-number counter, so
no number is ever handed out twice (SQLite may reuse a deleted row's id, and processes cache
blocks of numbers by account id).

Invoices the holder made on the address do not stop the move, or a squatter could block the
owner for good with one invoice: their intents name the owner's address, so they could only
ever pay the owner's payout. Those no payment has reached are invalidated (audited, with an
``invoice.invalid`` webhook to their merchant); paid ones stay the holder's history. The account
row is locked first, so an invoice being made on it either commits before the move (and is
invalidated with the rest) or is refused after it (``insert_invoice`` checks the owner).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eth_utils import to_checksum_address
from sqlmodel import Session

from api.settlement import repository as repo
from api.settlement.errors import AccountInUseError, OwnershipProofError
from api.settlement.events import emit_invoice_event
from api.settlement.models import Invoice, InvoiceState, InvoiceStatus
from crm.audit import service as audit
from crm.clock import Clock
from wallet.signing import recover_message

__all__ = [
    "MAX_VALIDITY",
    "invalidate_reclaimed",
    "link_message",
    "reclaim_address",
    "verify_proof",
]

#: How far ahead a proof may expire: long enough to sign and send, short enough that an old one
#: is useless after the address changes hands.
MAX_VALIDITY = timedelta(days=1)


def link_message(merchant_id: int, chain_id: int, address: str, valid_until: int) -> str:
    """The exact text the address signs (checksummed address, expiry in Unix seconds)."""
    return (
        "FollowPay: link this address to a merchant\n"
        f"merchant: {merchant_id}\n"
        f"chain: {chain_id}\n"
        f"address: {to_checksum_address(address)}\n"
        f"valid until: {valid_until}"
    )


def verify_proof(
    merchant_id: int,
    chain_id: int,
    address: str,
    *,
    signature: str,
    valid_until: int,
    clock: Clock,
) -> None:
    """Raise :class:`OwnershipProofError` unless ``address`` signed the link to this merchant
    and chain, and the proof is neither expired nor valid for longer than :data:`MAX_VALIDITY`."""
    now = clock.now()
    expires = datetime.fromtimestamp(valid_until, UTC) if 0 < valid_until < 2**40 else None
    if expires is None or expires <= now:
        raise OwnershipProofError("The ownership proof has expired.", param="proof_valid_until")
    if expires > now + MAX_VALIDITY:
        raise OwnershipProofError(
            "An ownership proof may be valid for at most one day.", param="proof_valid_until"
        )
    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
        signer = recover_message(link_message(merchant_id, chain_id, address, valid_until), raw)
    except ValueError:  # not hex, wrong length, or no valid point
        raise OwnershipProofError(
            "The ownership proof is not a signature.", param="proof_signature"
        ) from None
    if signer.lower() != address.lower():
        raise OwnershipProofError(
            "The ownership proof was not signed by this address for this merchant and chain.",
            param="proof_signature",
        )


def reclaim_address(
    session: Session, merchant_id: int, chain_id: int, address: str, *, actor: str, clock: Clock
) -> None:
    """After :func:`verify_proof`: move the record of ``address`` from the merchant holding it
    to ``merchant_id`` (see the module docstring), with an audit entry for each."""
    held = repo.account_by_address(session, chain_id, address)
    if held is None or held.merchant_id == merchant_id:
        return
    if repo.account_for_merchant(session, merchant_id, chain_id) is not None:
        raise AccountInUseError(
            "This merchant already has an account on this chain; an address held by another "
            "merchant can only be reclaimed as a merchant's first account on a chain.",
            param="address",
        )
    account_id = held.id or 0
    repo.lock_account(session, account_id)
    previous = held.merchant_id
    now = clock.now()
    for invoice in repo.unpaid_invoices_on_account(session, account_id, previous):
        invalidate_reclaimed(session, invoice, actor=actor, at=now)
    held.merchant_id = merchant_id
    repo.add(session, held)
    detail = {"chain_id": chain_id, "address": held.address, "from_merchant": previous}
    for owner, action in ((previous, "released"), (merchant_id, "reclaimed")):
        audit.record(
            session,
            merchant_id=owner,
            actor=actor,
            action=f"merchant_account.{action}",
            object_type="merchant_account",
            object_id=account_id,
            at=now,
            detail=detail | {"to_merchant": merchant_id},
        )


def invalidate_reclaimed(session: Session, invoice: Invoice, *, actor: str, at: datetime) -> None:
    """``invalid``/``marked``, audited (reason ``account_reclaimed``), ``invoice.invalid`` to
    its merchant: an invoice of a former holder that no payment holds."""
    invoice.state = InvoiceState.INVALID
    invoice.status = InvoiceStatus.MARKED
    repo.add(session, invoice)
    audit.record(
        session,
        merchant_id=invoice.merchant_id,
        actor=actor,
        action="invoice.mark_invalid",
        object_type="invoice",
        object_id=invoice.id,
        at=at,
        detail={"reason": "account_reclaimed"},
    )
    emit_invoice_event(session, invoice, "invoice.invalid")
