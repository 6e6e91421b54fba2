"""SQL of the API-side export: one contact's rows of one merchant, oldest first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlmodel import Session, col, select

from api.dispatch.models import InAppMessage, PhoneTask
from api.settlement.models import Invoice, Payment, Refund
from crm.audit.models import AuditLog

__all__ = ["audit_entries", "invoices", "messages", "payments", "phone_tasks", "refunds"]


def messages(session: Session, merchant_id: int, contact_id: int) -> Sequence[InAppMessage]:
    stmt = select(InAppMessage).where(
        InAppMessage.merchant_id == merchant_id, InAppMessage.contact_id == contact_id
    )
    return session.exec(stmt.order_by(col(InAppMessage.id))).all()


def phone_tasks(session: Session, merchant_id: int, contact_id: int) -> Sequence[PhoneTask]:
    stmt = select(PhoneTask).where(
        PhoneTask.contact_id == contact_id, PhoneTask.merchant_id == merchant_id
    )
    return session.exec(stmt.order_by(col(PhoneTask.id))).all()


def invoices(session: Session, merchant_id: int, contact_id: int) -> Sequence[Invoice]:
    """The contact's invoices (no contact index: an export is rare, a merchant scan is fine)."""
    stmt = select(Invoice).where(
        Invoice.merchant_id == merchant_id, Invoice.contact_id == contact_id
    )
    return session.exec(stmt.order_by(col(Invoice.created_at), col(Invoice.id))).all()


def payments(session: Session, invoice_ids: Sequence[str]) -> Sequence[Payment]:
    """The payments of the contact's invoices (``invoices`` scoped them), reorged included."""
    if not invoice_ids:
        return []
    stmt = select(Payment).where(col(Payment.invoice_id).in_(list(invoice_ids)))
    return session.exec(stmt.order_by(col(Payment.id))).all()


def refunds(session: Session, invoice_ids: Sequence[str]) -> Sequence[Refund]:
    if not invoice_ids:
        return []
    stmt = select(Refund).where(col(Refund.invoice_id).in_(list(invoice_ids)))
    return session.exec(stmt.order_by(col(Refund.id))).all()


def audit_entries(
    session: Session, merchant_id: int, object_type: str, object_ids: Iterable[int | str]
) -> Sequence[AuditLog]:
    ids = sorted({str(i) for i in object_ids})
    if not ids:
        return []
    stmt = select(AuditLog).where(
        AuditLog.merchant_id == merchant_id,
        AuditLog.object_type == object_type,
        col(AuditLog.object_id).in_(ids),
    )
    return session.exec(stmt.order_by(col(AuditLog.id))).all()
