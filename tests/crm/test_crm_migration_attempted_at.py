"""Migration 0004 stamps ``attempted_at`` on follow-ups that may already have reached their
contact, so the frequency cap counts them from the first run after the upgrade."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from crm.db import alembic_config, make_engine

from .conftest import START
from .test_crm_migrations import fresh_url  # noqa: F401 (fixture)

_FOLLOWUP = sa.text(
    "INSERT INTO crm_followup (id, merchant_id, contact_id, kind, purpose, payment_ref,"
    " invoice_ref, channels, state, reason, due_at, expires_at, attempts, queued_at, sent_at,"
    " created_at, updated_at) VALUES (:id, 1, 1, 'payment_settled', 'service_followup',"
    " :ref, :ref, '[\"email\"]', :state, :reason, :t, :t, 1, :queued, :sent, :t, :updated)"
)
_TOKEN = sa.text(
    "INSERT INTO crm_feedback (merchant_id, followup_id, contact_id, tags, token_hash,"
    " created_at, updated_at) VALUES (1, :id, 1, '[]', :hash, :t, :t)"
)
QUEUED, UPDATED = START.replace(hour=11), START.replace(hour=12)


def test_0004_stamps_possible_deliveries(fresh_url: str | sa.URL) -> None:  # noqa: F811
    command.upgrade(alembic_config(fresh_url), "0003")
    engine = make_engine(fresh_url)
    rows = [  # id, state, reason, queued_at, sent_at, live token
        (1, "failed", "delivery_uncertain", QUEUED, None, True),
        (2, "failed", "interrupted", None, None, True),
        (3, "failed", "smtp_refused", QUEUED, None, False),  # failed for sure
        (4, "queued", None, QUEUED, None, True),  # prepared, in flight
        (5, "queued", None, QUEUED, None, False),  # claimed, not prepared
        (6, "sent", None, QUEUED, START, True),  # sent_at counts already
    ]
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO crm_merchant (id, name, created_at) VALUES (1, 'M', :t)"),
                {"t": START},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO crm_contact (id, merchant_id, time_zone, personalised, created_at,"
                    " updated_at) VALUES (1, 1, 'UTC', false, :t, :t)"
                ),
                {"t": START},
            )
            for fid, state, reason, queued, sent, token in rows:
                conn.execute(
                    _FOLLOWUP,
                    {
                        "id": fid,
                        "ref": f"p{fid}",
                        "state": state,
                        "reason": reason,
                        "queued": queued,
                        "sent": sent,
                        "t": START,
                        "updated": UPDATED,
                    },
                )
                hash_ = f"{fid:064x}" if token else None
                conn.execute(_TOKEN, {"id": fid, "hash": hash_, "t": START})
        command.upgrade(alembic_config(fresh_url), "head")
        with engine.connect() as conn:
            stamped = conn.execute(
                sa.text(
                    "SELECT id, attempted_at = COALESCE(queued_at, updated_at) FROM crm_followup"
                    " WHERE attempted_at IS NOT NULL ORDER BY id"
                )
            ).all()
        assert [(fid, bool(same)) for fid, same in stamped] == [(1, True), (2, True), (4, True)]
    finally:
        engine.dispose()
