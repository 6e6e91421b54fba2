"""Blind indexes are scoped to their merchant: one customer at two merchants no longer shows

Until now an e-mail's (or wallet's) blind index was one HMAC under the server's index key,
the same at every merchant, so whoever read the database (or a backup) could link a customer
across merchants without any key. Each index is now ``sha256(scope, merchant_id, hmac)``
(``crm.crypto.scope_index``). Being a plain hash of the stored value, the stored indexes are
rescoped here without the master key, in id order and batches. Lookups were always per
merchant, so nothing else changes.

One way: the old indexes cannot be recovered from the new ones, so downgrade refuses.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 11:00:00
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
# A frozen copy of crm.crypto.scope_index as of this revision (tests hold the two together).
_SCOPE = b"followpay-crm/blind-index/merchant/v2\x00"


def _scoped(merchant_id: int, unscoped: str) -> str:
    msg = _SCOPE + str(merchant_id).encode() + b"\x00" + unscoped.encode()
    return hashlib.sha256(msg).hexdigest()


def _rescope(table: str, column: str) -> None:
    bind = op.get_bind()
    select = sa.text(
        f"SELECT id, merchant_id, {column} FROM {table} "  # noqa: S608 - fixed names
        f"WHERE id > :after AND {column} IS NOT NULL ORDER BY id LIMIT {_BATCH}"
    )
    update = sa.text(f"UPDATE {table} SET {column} = :index WHERE id = :id")  # noqa: S608
    after = 0
    while rows := bind.execute(select, {"after": after}).all():
        bind.execute(update, [{"id": row[0], "index": _scoped(row[1], row[2])} for row in rows])
        after = rows[-1][0]


def upgrade() -> None:
    _rescope("crm_contact", "email_index")
    _rescope("crm_contact_wallet", "address_index")


def downgrade() -> None:
    raise RuntimeError(
        "CRM revision 0007 cannot be undone: merchant-scoped blind indexes are one-way hashes "
        "of the old ones; restore the database from a backup taken before the upgrade instead"
    )
