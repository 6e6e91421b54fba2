"""Purchases are found by invoice: one sale is surveyed once, across a reorg

A reorg that removes a payment after its follow-up went out cancels the purchase; when the chain
takes the payment again the indexer records it under a new payment ref. Scheduling looks up the
invoice's earlier purchases (to send no second survey of the same sale) and a rating link checks
that its sale still holds, both by ``(merchant_id, invoice_ref)``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 22:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_crm_purchase_merchant_id_invoice_ref"),
        "crm_purchase",
        ["merchant_id", "invoice_ref"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_crm_purchase_merchant_id_invoice_ref"), table_name="crm_purchase")
