"""Privacy SQL: scrub blind indexes/ciphertexts and keep the erasure log."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm.contacts.models import ContactWallet
from crm.feedback.models import Feedback
from crm.privacy.models import ErasureLog

__all__ = ["add_log", "get_log", "scrub_feedback", "scrub_wallets"]


def get_log(session: Session, contact_id: int) -> ErasureLog | None:
    return session.exec(select(ErasureLog).where(ErasureLog.contact_id == contact_id)).first()


def add_log(session: Session, log: ErasureLog) -> ErasureLog:
    session.add(log)
    session.flush()
    return log


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def scrub_wallets(session: Session, contact_id: int) -> int:
    return _rowcount(
        session.execute(
            sa.update(ContactWallet)
            .where(col(ContactWallet.contact_id) == contact_id)
            .values(address_index=None, address_enc=None)
            .execution_options(synchronize_session="fetch")
        )
    )


def scrub_feedback(session: Session, contact_id: int) -> int:
    return _rowcount(
        session.execute(
            sa.update(Feedback)
            .where(col(Feedback.contact_id) == contact_id)
            .values(comment_enc=None, token_hash=None)
            .execution_options(synchronize_session="fetch")
        )
    )
