"""How the indexer names and describes an on-chain log to others: :func:`payment_ref` (the
CRM's reference for a payment), the chain evidence that invoice webhooks carry, and the
``payment`` object of ``payment.unmatched``."""

from __future__ import annotations

from typing import Any

from api.settlement.models import Payment, Refund

__all__ = ["payment_evidence", "payment_object", "payment_ref", "refund_evidence"]


def payment_ref(payment: Payment | int) -> str:
    """The CRM's opaque reference for a payment (new after a reorg re-includes it)."""
    return f"pay_{payment if isinstance(payment, int) else payment.id}"


def _log_facts(row: dict[str, Any] | Payment | Refund) -> tuple[Any, dict[str, Any]]:
    """A stored log's getter and the facts every payment or refund event carries."""
    get = row.get if isinstance(row, dict) else lambda key: getattr(row, key)
    facts = {
        "tx_hash": get("tx_hash"),
        "block_number": get("block_number"),
        "block_hash": get("block_hash"),
        "log_index": get("log_index"),
        "amount": str(get("amount")),
        "token": get("token"),
    }
    return get, facts


def payment_evidence(row: dict[str, Any] | Payment) -> dict[str, Any]:
    get, facts = _log_facts(row)
    return facts | {"late": bool(get("late"))}


def refund_evidence(row: dict[str, Any] | Refund) -> dict[str, Any]:
    """A ``PaymentRefunded`` log's facts: its token (``null`` if indexed before it was kept),
    the router's running total for the number, and whether it counts for the invoice."""
    get, facts = _log_facts(row)
    total = get("total_refunded")
    return facts | {
        "to": get("to"),
        "total_refunded": None if total is None else str(total),
        "credited": bool(get("credited")),
    }


def payment_object(row: dict[str, Any], payment_id: int) -> dict[str, Any]:
    """The ``payment`` of a ``payment.unmatched`` event (``GET /v1/payments`` shows the same)."""
    return {
        "id": payment_id,
        "object": "payment",
        "invoice_id": None,
        "chain_id": row["chain_id"],
        "merchant_address": row["merchant_address"],
        "invoice_number": str(row["invoice_number"]),
        "tx_hash": row["tx_hash"],
        "block_number": row["block_number"],
        "block_hash": row["block_hash"],
        "log_index": row["log_index"],
        "payer": row["payer"],
        "token": row["token"],
        "amount": str(row["amount"]),
        "fee": str(row["fee"]),
        "state": row["state"],
    }
