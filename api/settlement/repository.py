"""All SQL for invoices, payments, refunds and the indexer checkpoint."""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.settlement.models import (
    IndexedBlock,
    IndexerCursor,
    Invoice,
    InvoiceState,
    InvoiceStatus,
    MerchantAccount,
    Payment,
    PaymentState,
    Refund,
)
from crm.db import execute_many

_Row = TypeVar("_Row")

__all__ = [
    "AccountRow",
    "InvoiceRow",
    "account_by_address",
    "account_for_merchant",
    "account_has_invoices",
    "account_ids_by_address",
    "account_row",
    "add",
    "allocate_invoice_number",
    "cursor",
    "delete_blocks_after",
    "expirable",
    "get_account",
    "get_invoice",
    "indexed_top",
    "insert_invoice",
    "insert_payments",
    "insert_refunds",
    "invoice_by_id",
    "invoice_rows_by_id",
    "invoice_rows_by_number",
    "invoices_select",
    "invoices_window",
    "list_invoices",
    "lock_account",
    "lock_invoice",
    "lock_invoice_by_id",
    "merchants_by_address",
    "open_invoice_for_order",
    "payment_keys",
    "payments_after",
    "payments_for_invoice",
    "payments_for_invoices",
    "payments_select",
    "pending_payments",
    "prune_blocks",
    "recent_blocks",
    "refund_keys",
    "refunds_after",
    "refunds_for_invoice",
    "reserve_invoice_numbers",
    "save_blocks",
    "save_cursor",
    "top_blocks",
    "uncredited_refund_totals",
    "unpaid_invoices_on_account",
    "update_invoice_rows",
]

_CHUNK = 500  # bound IN lists (SQLite's variable limit, PostgreSQL's plan size)


def add(session: Session, row: _Row) -> _Row:
    session.add(row)
    session.flush()
    return row


def insert_payments(session: Session, chain_id: int, rows: list[dict[str, Any]]) -> list[int]:
    """Core executemany (a catch-up inserts thousands of rows); the new ids in ``rows`` order.

    No ``RETURNING``: SQLite cannot promise its order, so SQLAlchemy would insert row by row.
    The ids are read back in one query by each row's (tx hash, log index, block hash), unique
    among the rows not reorged.
    """
    if not rows:
        return []
    table = Payment.__table__  # type: ignore[attr-defined]
    execute_many(session, _INSERT_PAYMENT, rows)
    numbers = [int(r["block_number"]) for r in rows]
    stmt = sa.select(table.c.id, table.c.tx_hash, table.c.log_index, table.c.block_hash).where(
        table.c.chain_id == chain_id,
        table.c.block_number >= min(numbers),
        table.c.block_number <= max(numbers),
        table.c.state != PaymentState.REORGED.value,
    )
    ids = {(t, int(i), b): int(row_id) for row_id, t, i, b in session.execute(stmt).all()}
    return [ids[(r["tx_hash"], int(r["log_index"]), r["block_hash"])] for r in rows]


def insert_refunds(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(sa.insert(Refund.__table__), rows)  # type: ignore[attr-defined]


# Statements on the invoice-creation path are built once: constructing one costs more than
# SQLite takes to run it.
_ACCOUNT_FOR_MERCHANT = select(MerchantAccount).where(
    col(MerchantAccount.merchant_id) == sa.bindparam("merchant_id"),
    col(MerchantAccount.chain_id) == sa.bindparam("chain_id"),
)
_ACCOUNTS = MerchantAccount.__table__  # type: ignore[attr-defined]
_ALLOCATE = (
    sa.update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == sa.bindparam("account_id"))
    .values(next_invoice_number=_ACCOUNTS.c.next_invoice_number + sa.bindparam("count"))
    .returning(_ACCOUNTS.c.next_invoice_number)
)
_INVOICES = Invoice.__table__  # type: ignore[attr-defined]
_OPEN_FOR_ORDER = sa.select(_INVOICES.c.id, _INVOICES.c.state).where(
    _INVOICES.c.merchant_id == sa.bindparam("merchant_id"),
    _INVOICES.c.order_id == sa.bindparam("order_id"),
    _INVOICES.c.state.not_in(sa.bindparam("closed", expanding=True)),
)
# A duplicate (an open invoice for the order: the partial unique index) inserts nothing instead
# of failing the transaction, so the happy path needs no pre-check query.
# (RETURNING, because an INSERT's rowcount is not reliable across drivers.)
# The row goes in only while its account still belongs to its merchant and still names the
# operator that signed the invoice: a reclaim or an operator rotation updates the account row,
# which the FOR SHARE below waits for, and then the condition is re-checked on the new row. So
# no invoice lands on an account another merchant holds, and none signed by a replaced
# operator (the router would refuse its pay, and the rotation re-signed only the invoices it
# saw), even from a process whose account cache is a second old. A rotation that waits for
# the insert instead sees the new invoice and signs it again.
_OWNED_ROW = sa.select(
    *(sa.bindparam(column.key, type_=column.type) for column in _INVOICES.columns)
).where(
    sa.exists(
        sa.select(_ACCOUNTS.c.id)
        .where(
            _ACCOUNTS.c.id == sa.bindparam("account_id"),
            _ACCOUNTS.c.merchant_id == sa.bindparam("merchant_id"),
            sa.func.lower(_ACCOUNTS.c.operator) == sa.bindparam("signed_by"),
        )
        .with_for_update(read=True)
    )
)
_INSERT_INVOICE = {
    "sqlite": sqlite_insert(_INVOICES)
    .from_select(list(_INVOICES.columns), _OWNED_ROW)
    .on_conflict_do_nothing()
    .returning(_INVOICES.c.id),
    "postgresql": pg_insert(_INVOICES)
    .from_select(list(_INVOICES.columns), _OWNED_ROW)
    .on_conflict_do_nothing()
    .returning(_INVOICES.c.id),
}
_INSERT_PAYMENT = sa.insert(Payment.__table__)  # type: ignore[attr-defined]
_BLOCKS = IndexedBlock.__table__  # type: ignore[attr-defined]
# A block stored by an earlier (replayed) step is skipped by the unique (cursor, number).
_INSERT_BLOCK = {
    "sqlite": sqlite_insert(_BLOCKS).on_conflict_do_nothing(),
    "postgresql": pg_insert(_BLOCKS).on_conflict_do_nothing(),
}
_PAYMENTS = Payment.__table__  # type: ignore[attr-defined]
_REFUNDS = Refund.__table__  # type: ignore[attr-defined]

# The indexer's per-step statements are built once (building one costs more than SQLite takes
# to run it, and a step that follows the head is a few payments).
_CURSORS = IndexerCursor.__table__  # type: ignore[attr-defined]
_CURSOR = (
    sa.select(_CURSORS.c.id, _CURSORS.c.last_block)
    .where(
        _CURSORS.c.chain_id == sa.bindparam("chain_id"),
        _CURSORS.c.router == sa.bindparam("router"),
    )
    .with_for_update()
)
_INSERT_CURSOR = {
    "sqlite": sqlite_insert(_CURSORS).on_conflict_do_nothing(),
    "postgresql": pg_insert(_CURSORS).on_conflict_do_nothing(),
}
_SAVE_CURSOR = (
    sa.update(_CURSORS)
    .where(_CURSORS.c.id == sa.bindparam("cursor_id"))
    .values(last_block=sa.bindparam("new_last_block"), updated_at=sa.bindparam("now"))
)
_ACCOUNT_IDS_BY_ADDRESS = sa.select(_ACCOUNTS.c.id, _ACCOUNTS.c.address).where(
    _ACCOUNTS.c.chain_id == sa.bindparam("chain_id"),
    sa.func.lower(_ACCOUNTS.c.address).in_(sa.bindparam("addresses", expanding=True)),
)
_TOP_BLOCKS = (
    sa.select(_BLOCKS.c.number, _BLOCKS.c.hash)
    .where(_BLOCKS.c.cursor_id == sa.bindparam("cursor_id"))
    .order_by(_BLOCKS.c.number.desc())
    .limit(2)
)
_BELOW_WINDOW = _BLOCKS.alias("below")
# Keeps the highest block under ``keep_from`` too: the anchor that lets a reorg deeper than the
# window be noticed (every block in the window replaced, and the anchor as well).
_PRUNE = sa.delete(_BLOCKS).where(
    _BLOCKS.c.cursor_id == sa.bindparam("cursor_id"),
    _BLOCKS.c.number
    < (
        sa.select(sa.func.max(_BELOW_WINDOW.c.number))
        .where(
            _BELOW_WINDOW.c.cursor_id == sa.bindparam("cursor_id"),
            _BELOW_WINDOW.c.number < sa.bindparam("keep_from"),
        )
        .scalar_subquery()
    ),
)


def _keys_in_range(table: sa.Table, live: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """The range's applied logs: a reorged row's key is not one (its log may come back)."""
    return sa.select(table.c.tx_hash, table.c.log_index, table.c.block_hash).where(
        table.c.chain_id == sa.bindparam("chain_id"),
        table.c.block_number >= sa.bindparam("from_block"),
        table.c.block_number <= sa.bindparam("to_block"),
        live,
    )


_PAYMENT_KEYS = _keys_in_range(_PAYMENTS, _PAYMENTS.c.state != PaymentState.REORGED.value)
_REFUND_KEYS = _keys_in_range(_REFUNDS, _REFUNDS.c.reorged.is_(False))


def _read_by(table: sa.Table, cursor_id: int | sa.BindParameter[int]) -> sa.ColumnElement[bool]:
    """The logs ``cursor_id`` read (and those stored before logs named their cursor, 0015):
    another router's on the same chain are its own cursor's to confirm or undo."""
    return sa.or_(table.c.cursor_id == cursor_id, table.c.cursor_id.is_(None))


_PENDING_IDS = sa.select(_PAYMENTS.c.id).where(
    _PAYMENTS.c.chain_id == sa.bindparam("chain_id"),
    _PAYMENTS.c.state == PaymentState.PENDING.value,
    _read_by(_PAYMENTS, sa.bindparam("cursor_id")),
)


@functools.cache
def _invoice_columns() -> tuple[tuple[str, str], ...]:
    """(model attribute, column key) pairs: ``metadata_`` is stored in column ``metadata``."""
    return tuple((a.key, a.columns[0].key) for a in sa.inspect(Invoice).column_attrs)


@dataclass(frozen=True, slots=True)
class AccountRow:
    """A merchant's router account as invoice creation reads it: Core, immutable, cacheable."""

    id: int
    merchant_id: int
    chain_id: int
    address: str
    payout: str
    operator: str


_ACCOUNT_ROW = sa.select(*(_ACCOUNTS.c[f] for f in AccountRow.__dataclass_fields__)).where(
    _ACCOUNTS.c.merchant_id == sa.bindparam("merchant_id"),
    _ACCOUNTS.c.chain_id == sa.bindparam("chain_id"),
)


def account_row(session: Session, merchant_id: int, chain_id: int) -> AccountRow | None:
    params = {"merchant_id": merchant_id, "chain_id": chain_id}
    row = session.connection().execute(_ACCOUNT_ROW, params).first()
    return None if row is None else AccountRow(*row)


def account_for_merchant(
    session: Session, merchant_id: int, chain_id: int
) -> MerchantAccount | None:
    params = {"merchant_id": merchant_id, "chain_id": chain_id}
    return session.exec(_ACCOUNT_FOR_MERCHANT, params=params).first()


def get_account(session: Session, account_id: int) -> MerchantAccount | None:
    return session.get(MerchantAccount, account_id)


def account_by_address(session: Session, chain_id: int, address: str) -> MerchantAccount | None:
    stmt = select(MerchantAccount).where(
        MerchantAccount.chain_id == chain_id,
        sa.func.lower(MerchantAccount.address) == address.lower(),
    )
    return session.exec(stmt).first()


def account_has_invoices(session: Session, account_id: int) -> bool:
    stmt = sa.select(_INVOICES.c.id).where(_INVOICES.c.account_id == account_id).limit(1)
    return session.execute(stmt).first() is not None


def lock_account(session: Session, account_id: int) -> None:
    """Hold the account row until commit (PostgreSQL ``FOR UPDATE``: it waits for, and then
    blocks, invoice inserts on the account; SQLite's one writer serialises them anyway)."""
    stmt = sa.select(_ACCOUNTS.c.id).where(_ACCOUNTS.c.id == account_id).with_for_update()
    session.execute(stmt)


def unpaid_invoices_on_account(
    session: Session, account_id: int, merchant_id: int
) -> Sequence[Invoice]:
    """``merchant_id``'s invoices on the account that no payment has reached: ``new``, and
    ``expired`` with no status (its intent stays payable for the late window; a held late
    payment sets ``paid_late``). Locked until commit: one an indexer step moved on meanwhile
    is re-checked and left out."""
    stmt = (
        select(Invoice)
        .where(
            Invoice.account_id == account_id,
            Invoice.merchant_id == merchant_id,
            sa.or_(
                col(Invoice.state) == InvoiceState.NEW,
                sa.and_(
                    col(Invoice.state) == InvoiceState.EXPIRED,
                    col(Invoice.status) == InvoiceStatus.NONE,
                ),
            ),
        )
        .with_for_update()
    )
    return session.exec(stmt).all()


def account_ids_by_address(session: Session, chain_id: int, addresses: set[str]) -> dict[str, int]:
    """Account ids for ``addresses`` keyed by lower-case address (one Core query per chunk)."""
    lowered = sorted({a.lower() for a in addresses})
    found: dict[str, int] = {}
    conn = session.connection()
    for start in range(0, len(lowered), _CHUNK):
        params = {"chain_id": chain_id, "addresses": lowered[start : start + _CHUNK]}
        for account_id, address in conn.execute(_ACCOUNT_IDS_BY_ADDRESS, params):
            found[str(address).lower()] = int(account_id)
    return found


def allocate_invoice_number(session: Session, account_id: int) -> int:
    """Atomically take the next on-chain invoice number (one UPDATE ... RETURNING)."""
    return reserve_invoice_numbers(session, account_id, 1)


def reserve_invoice_numbers(session: Session, account_id: int, count: int) -> int:
    """Atomically take ``count`` consecutive invoice numbers; returns the first."""
    params = {"account_id": account_id, "count": count}
    return int(session.connection().execute(_ALLOCATE, params).scalar_one()) - count


def open_invoice_for_order(
    session: Session, merchant_id: int, order_id: str, closed: Sequence[str]
) -> tuple[str, str] | None:
    """``(id, state)`` of an invoice for the order whose state is not in ``closed``."""
    params = {"merchant_id": merchant_id, "order_id": order_id, "closed": list(closed)}
    row = session.execute(_OPEN_FOR_ORDER, params).first()
    return None if row is None else (str(row.id), str(row.state))


def insert_invoice(session: Session, invoice: Invoice, signed_by: str) -> bool:
    """A Core INSERT of a new invoice (no unit-of-work flush; ``invoice`` stays transient).
    False, and nothing written, when a unique index refuses it (an open invoice for the order),
    its account no longer belongs to its merchant, or its operator is no longer ``signed_by``."""
    values = {column: getattr(invoice, attr) for attr, column in _invoice_columns()}
    values["signed_by"] = signed_by.lower()
    conn = session.connection()
    return conn.execute(_INSERT_INVOICE[conn.dialect.name], values).first() is not None


def invoice_by_id(session: Session, invoice_id: str) -> Invoice | None:
    """Any merchant's invoice: only for a caller that proved a capability for this id (the
    hosted checkout link's HMAC)."""
    return session.get(Invoice, invoice_id)


def get_invoice(session: Session, merchant_id: int, invoice_id: str) -> Invoice | None:
    stmt = select(Invoice).where(Invoice.id == invoice_id, Invoice.merchant_id == merchant_id)
    return session.exec(stmt).first()


@dataclass(slots=True)
class InvoiceRow:
    """The columns of an invoice the indexer reads and writes, loaded and saved with Core.

    A catch-up touches tens of thousands of invoices; ORM objects cost ~70 us each to load and
    ~100 us each to flush, more than the rest of the step. Same attribute names as
    :class:`Invoice`, so webhook payloads render either. ``seen`` holds the guarded columns as
    read: :func:`update_invoice_rows` writes the row only if they still hold it."""

    id: str
    merchant_id: int
    contact_id: int | None
    number: int
    order_id: str
    chain_id: int
    token: str
    amount: int
    fee: int
    intent_hash: str | None
    state: InvoiceState
    status: InvoiceStatus
    paid_amount: int
    refunded_amount: int
    confirmations_required: int
    expires_at: datetime
    settled_at: datetime | None
    seen: tuple[Any, ...] = field(default=(), repr=False, compare=False)

    def snapshot(self) -> InvoiceRow:
        """A copy as it is now: an event's payload shows the invoice at that event (the step
        goes on changing the row: processing, then settled in the same step). Not
        ``dataclasses.replace``: it checks every field by name, ~15 us a copy, and a catch-up
        copies twice per payment."""
        return InvoiceRow(*_ALL_VALUES(self))


_ALL_VALUES = operator.attrgetter(*InvoiceRow.__dataclass_fields__)
_ROW_COLUMNS = tuple(name for name in InvoiceRow.__dataclass_fields__ if name != "seen")
_UPDATED_COLUMNS = ("state", "status", "paid_amount", "refunded_amount", "settled_at")
_UPDATED_KEYS = tuple((c, f"new_{c}") for c in _UPDATED_COLUMNS)
#: What another writer (a staff mark, an account reclaim, another indexer) may have changed
#: since the indexer read a row; settled_at only ever changes with the state.
_GUARDED = ("state", "status", "paid_amount", "refunded_amount")
_GUARDED_KEYS = tuple((c, f"seen_{c}") for c in _GUARDED)
_UPDATE_ROWS = (
    sa.update(_INVOICES)
    .where(
        _INVOICES.c.id == sa.bindparam("row_id"),
        *(_INVOICES.c[c] == sa.bindparam(k, type_=_INVOICES.c[c].type) for c, k in _GUARDED_KEYS),
    )
    .values({c: sa.bindparam(f"new_{c}", type_=_INVOICES.c[c].type) for c in _UPDATED_COLUMNS})
)


_ROWS_BY_NUMBER = sa.select(*(_INVOICES.c[c] for c in _ROW_COLUMNS)).where(
    _INVOICES.c.account_id == sa.bindparam("account_id"),
    _INVOICES.c.number.in_(sa.bindparam("numbers", expanding=True)),
    _INVOICES.c.merchant_id
    == sa.select(_ACCOUNTS.c.merchant_id)
    .where(_ACCOUNTS.c.id == sa.bindparam("account_id"))
    .scalar_subquery(),
)


def _guarded(row: InvoiceRow) -> tuple[Any, ...]:
    return (str(row.state), str(row.status), int(row.paid_amount), int(row.refunded_amount))


def _invoice_row(row: Any) -> InvoiceRow:
    """A selected row of ``_ROW_COLUMNS``, in that order (positional: ``Row._asdict`` builds
    the result's keys again for every row)."""
    invoice = InvoiceRow(*row)
    invoice.state = InvoiceState(invoice.state)
    invoice.status = InvoiceStatus(invoice.status)
    invoice.seen = _guarded(invoice)
    return invoice


def invoice_rows_by_number(
    session: Session, account_id: int, numbers: set[int]
) -> dict[int, InvoiceRow]:
    """The invoices of the account's current holder by number. A former holder's (the account
    was reclaimed, :mod:`api.settlement.account_proof`) are left out: a log for one reached
    the holder's address, so it is the holder's unmatched payment or refund, not the former
    holder's sale."""
    ordered = sorted(numbers)
    found: dict[int, InvoiceRow] = {}
    conn = session.connection()
    for start in range(0, len(ordered), _CHUNK):
        params = {"account_id": account_id, "numbers": ordered[start : start + _CHUNK]}
        for row in conn.execute(_ROWS_BY_NUMBER, params).all():
            found[int(row.number)] = _invoice_row(row)
    return found


def invoice_rows_by_id(
    session: Session, ids: Iterable[str], *, lock: bool = False
) -> dict[str, InvoiceRow]:
    """Invoice rows by id; ``lock``: held until commit (PostgreSQL ``FOR NO KEY UPDATE``, in id
    order; SQLite's writer lock is held by the whole step already)."""
    ordered = sorted(set(ids))
    columns = [_INVOICES.c[c] for c in _ROW_COLUMNS]
    found: dict[str, InvoiceRow] = {}
    for start in range(0, len(ordered), _CHUNK):
        stmt = sa.select(*columns).where(_INVOICES.c.id.in_(ordered[start : start + _CHUNK]))
        if lock:
            stmt = stmt.order_by(_INVOICES.c.id).with_for_update(key_share=True)
        for row in session.execute(stmt):
            found[str(row.id)] = _invoice_row(row)
    return found


@functools.lru_cache(maxsize=8)
def _compiled_many(
    stmt: sa.Update, keys: tuple[str, ...], dialect: sa.Dialect
) -> tuple[str, tuple[str, ...], tuple[Any, ...], bool]:
    compiled: Any = stmt.compile(dialect=dialect, column_keys=list(keys))
    names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
    processors = tuple(
        compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names
    )
    return compiled.string, names, processors, bool(compiled.positional)


def _execute_many_matched(session: Session, stmt: sa.Update, rows: list[dict[str, Any]]) -> int:
    """:func:`crm.db.execute_many` (one ``executemany``, bind processors looked up once) that
    returns how many rows the statement matched in all (PostgreSQL and SQLite both sum it)."""
    conn = session.connection()
    sql, names, processors, positional = _compiled_many(stmt, tuple(rows[0]), conn.dialect)
    pairs = list(zip(names, processors, strict=True))
    if positional:
        params: list[Any] = [
            tuple([p(row[n]) if p is not None else row[n] for n, p in pairs]) for row in rows
        ]
    else:
        params = [{n: p(row[n]) if p is not None else row[n] for n, p in pairs} for row in rows]
    return int(conn.exec_driver_sql(sql, params).rowcount)


def update_invoice_rows(session: Session, rows: Iterable[InvoiceRow]) -> dict[str, InvoiceRow]:
    """Write back state, status, paid/refunded amounts and settled_at (one executemany), each
    row only while its guarded columns still hold what was read (``row.seen``).

    Returns the rows another transaction changed since they were read (usually none: the
    executemany's matched count says so), as they are now, locked until commit: those were not
    written, and the caller re-applies its changes to them and writes them again. A row written
    here is locked by its UPDATE, so it still holds the values written when the rows are read to
    find the others."""
    written = list(rows)
    if not written:
        return {}
    params = [
        {
            "row_id": r.id,
            **{k: getattr(r, c) for c, k in _UPDATED_KEYS},
            **dict(zip((k for _, k in _GUARDED_KEYS), r.seen, strict=True)),
        }
        for r in written
    ]
    matched = _execute_many_matched(session, _UPDATE_ROWS, params)
    changed: dict[str, InvoiceRow] = {}
    if matched != len(written):
        current = invoice_rows_by_id(session, (r.id for r in written), lock=True)
        changed = {r.id: current[r.id] for r in written if current[r.id].seen != _guarded(r)}
    for r in written:
        if r.id not in changed:
            r.seen = _guarded(r)
    return changed


_TOUCH_INVOICE = (
    sa.update(_INVOICES)
    .where(
        _INVOICES.c.id == sa.bindparam("invoice_id"),
        _INVOICES.c.merchant_id == sa.bindparam("of_merchant"),
    )
    .values(state=_INVOICES.c.state)
)


def lock_invoice(session: Session, merchant_id: int, invoice_id: str) -> Invoice | None:
    """The merchant's invoice read afresh under a lock held until commit, for a decision that
    writes it (staff marking). PostgreSQL: ``FOR NO KEY UPDATE`` (an indexer step writing the row
    waits, then finds it changed and re-applies). SQLite: the database's write lock, taken by a
    no-op UPDATE before the read: the API's connection reads in autocommit until its first
    write, so a plain read could be overtaken by a step that commits before that write."""
    if session.get_bind().dialect.name == "sqlite":
        params = {"invoice_id": invoice_id, "of_merchant": merchant_id}
        session.connection().execute(_TOUCH_INVOICE, params)
    stmt = (
        select(Invoice)
        .where(Invoice.id == invoice_id, Invoice.merchant_id == merchant_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).first()


def lock_invoice_by_id(session: Session, invoice_id: str) -> Invoice | None:
    """An invoice (any merchant's) read afresh and locked until commit (PostgreSQL)."""
    return session.get(
        Invoice, invoice_id, with_for_update={"key_share": True}, populate_existing=True
    )


def list_invoices(
    session: Session,
    merchant_id: int,
    *,
    state: InvoiceState | None = None,
    limit: int = 100,
) -> Sequence[Invoice]:
    stmt = select(Invoice).where(Invoice.merchant_id == merchant_id)
    if state is not None:
        stmt = stmt.where(Invoice.state == state)
    stmt = stmt.order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc()).limit(limit)
    return session.exec(stmt).all()


def invoices_select(
    merchant_id: int | None,
    *,
    state: InvoiceState | None = None,
    order_id: str | None = None,
    created_gte: datetime | None = None,
    created_lt: datetime | None = None,
) -> SelectOfScalar[Invoice]:
    """A filterable select of invoices (``merchant_id=None``: every merchant) for pagination."""
    stmt = select(Invoice)
    if merchant_id is not None:
        stmt = stmt.where(Invoice.merchant_id == merchant_id)
    if state is not None:
        stmt = stmt.where(Invoice.state == state)
    if order_id is not None:
        stmt = stmt.where(Invoice.order_id == order_id)
    if created_gte is not None:
        stmt = stmt.where(col(Invoice.created_at) >= created_gte)
    if created_lt is not None:
        stmt = stmt.where(col(Invoice.created_at) < created_lt)
    return stmt


def invoices_window(
    session: Session,
    merchant_id: int | None,
    created_gte: datetime,
    created_lt: datetime,
    limit: int,
) -> Sequence[Invoice]:
    """Invoices created in ``[created_gte, created_lt)``, oldest first, at most ``limit``."""
    stmt = invoices_select(merchant_id, created_gte=created_gte, created_lt=created_lt)
    stmt = stmt.order_by(col(Invoice.created_at), col(Invoice.id)).limit(limit)
    return session.exec(stmt).all()


def expirable(session: Session, now: datetime, limit: int) -> Sequence[Invoice]:
    """``new`` invoices past their expiry, read afresh and locked until commit (PostgreSQL);
    one a staff mark holds is skipped (it is not ``new`` once that commits, or is taken by the
    next step)."""
    stmt = (
        select(Invoice)
        .where(Invoice.state == InvoiceState.NEW, col(Invoice.expires_at) <= now)
        .limit(limit)
        .with_for_update(key_share=True, skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).all()


def payment_keys(
    session: Session, chain_id: int, from_block: int, to_block: int
) -> set[tuple[str, int, str]]:
    """(tx hash, log index, block hash) of the payments already stored for a block range."""
    return _keys(session, _PAYMENT_KEYS, chain_id, from_block, to_block)


def refund_keys(
    session: Session, chain_id: int, from_block: int, to_block: int
) -> set[tuple[str, int, str]]:
    return _keys(session, _REFUND_KEYS, chain_id, from_block, to_block)


def _keys(
    session: Session, stmt: sa.Select[Any], chain_id: int, from_block: int, to_block: int
) -> set[tuple[str, int, str]]:
    params = {"chain_id": chain_id, "from_block": from_block, "to_block": to_block}
    return {(t, int(i), b) for t, i, b in session.connection().execute(stmt, params)}


def pending_payments(session: Session, chain_id: int, cursor_id: int) -> Sequence[Payment]:
    """The cursor's payments waiting for their confirmation depth (usually none: a cheap Core
    query first, on the partial index of pending payments, then the ORM rows if any)."""
    params = {"chain_id": chain_id, "cursor_id": cursor_id}
    if session.connection().execute(_PENDING_IDS, params).first() is None:
        return []
    stmt = select(Payment).where(
        Payment.chain_id == chain_id,
        Payment.state == PaymentState.PENDING,
        _read_by(_PAYMENTS, cursor_id),
    )
    return session.exec(stmt.order_by(col(Payment.block_number))).all()


def payments_for_invoice(session: Session, invoice_id: str) -> Sequence[Payment]:
    stmt = select(Payment).where(Payment.invoice_id == invoice_id).order_by(col(Payment.id))
    return session.exec(stmt).all()


def payments_for_invoices(session: Session, invoice_ids: Sequence[str]) -> Sequence[Payment]:
    if not invoice_ids:
        return []
    stmt = select(Payment).where(col(Payment.invoice_id).in_(list(invoice_ids)))
    return session.exec(stmt.order_by(col(Payment.id))).all()


def _replaced_blocks(cursor_id: int, block: int) -> sa.ScalarSelect[Any]:
    """The hashes ``cursor_id`` stored above ``block``, its fork point: every block it
    applied a log of is stored, and all those above the fork are no longer on the chain.
    Another router's logs in the same database are not this cursor's to undo: its own
    stored blocks, still canonical, say they stand (it would never read them again)."""
    return (
        sa.select(_BLOCKS.c.hash)
        .where(_BLOCKS.c.cursor_id == cursor_id, _BLOCKS.c.number > block)
        .scalar_subquery()
    )


def payments_after(
    session: Session, chain_id: int, cursor_id: int, block: int
) -> Sequence[Payment]:
    """The live payments ``cursor_id`` applied in blocks above ``block`` (a reorg's fork)."""
    stmt = select(Payment).where(
        Payment.chain_id == chain_id,
        Payment.block_number > block,
        Payment.state != PaymentState.REORGED,
        col(Payment.block_hash).in_(_replaced_blocks(cursor_id, block)),
        _read_by(_PAYMENTS, cursor_id),
    )
    return session.exec(stmt).all()


def refunds_after(session: Session, chain_id: int, cursor_id: int, block: int) -> Sequence[Refund]:
    stmt = select(Refund).where(
        Refund.chain_id == chain_id,
        Refund.block_number > block,
        col(Refund.reorged).is_(False),
        col(Refund.block_hash).in_(_replaced_blocks(cursor_id, block)),
        _read_by(_REFUNDS, cursor_id),
    )
    return session.exec(stmt).all()


def refunds_for_invoice(session: Session, invoice_id: str) -> Sequence[Refund]:
    """The invoice's refunds still on chain, in chain order."""
    stmt = (
        select(Refund)
        .where(Refund.invoice_id == invoice_id, col(Refund.reorged).is_(False))
        .order_by(col(Refund.block_number), col(Refund.log_index))
    )
    return session.exec(stmt).all()


_UNCREDITED_REFUNDS = sa.select(_REFUNDS.c.invoice_id, _REFUNDS.c.amount).where(
    _REFUNDS.c.invoice_id.in_(sa.bindparam("ids", expanding=True)),
    _REFUNDS.c.credited.is_(False),
    _REFUNDS.c.reorged.is_(False),
)


def uncredited_refund_totals(session: Session, invoice_ids: Iterable[str]) -> dict[str, int]:
    """Per invoice, the refunds on chain that were not in its token (summed here: SQLite stores
    amounts as text)."""
    ordered = sorted(set(invoice_ids))
    totals: dict[str, int] = {}
    conn = session.connection()
    for start in range(0, len(ordered), _CHUNK):
        params = {"ids": ordered[start : start + _CHUNK]}
        for invoice_id, amount in conn.execute(_UNCREDITED_REFUNDS, params):
            totals[str(invoice_id)] = totals.get(str(invoice_id), 0) + int(amount)
    return totals


_MERCHANTS_BY_ADDRESS = sa.select(_ACCOUNTS.c.merchant_id, _ACCOUNTS.c.address).where(
    _ACCOUNTS.c.chain_id == sa.bindparam("chain_id"),
    sa.func.lower(_ACCOUNTS.c.address).in_(sa.bindparam("addresses", expanding=True)),
)


def merchants_by_address(session: Session, chain_id: int, addresses: set[str]) -> dict[str, int]:
    """The merchants holding the router accounts at ``addresses``, by lower-case address."""
    lowered = sorted({a.lower() for a in addresses})
    found: dict[str, int] = {}
    conn = session.connection()
    for start in range(0, len(lowered), _CHUNK):
        params = {"chain_id": chain_id, "addresses": lowered[start : start + _CHUNK]}
        for merchant_id, address in conn.execute(_MERCHANTS_BY_ADDRESS, params):
            found[str(address).lower()] = int(merchant_id)
    return found


def payments_select(
    merchant_id: int | None, *, matched: bool | None = None
) -> SelectOfScalar[Payment]:
    """A select of payments for pagination (``merchant_id=None``: every merchant's). A matched
    payment belongs to its invoice's merchant; an unmatched one (no invoice of ours carries its
    number and intent) to the merchant whose router account has its address now."""
    stmt = select(Payment)
    if matched is not None:
        invoice = col(Payment.invoice_id)
        stmt = stmt.where(invoice.is_not(None) if matched else invoice.is_(None))
    if merchant_id is not None:
        invoices_of_merchant = sa.exists().where(
            _INVOICES.c.id == _PAYMENTS.c.invoice_id, _INVOICES.c.merchant_id == merchant_id
        )
        address_of_merchant = sa.exists().where(
            _ACCOUNTS.c.chain_id == _PAYMENTS.c.chain_id,
            sa.func.lower(_ACCOUNTS.c.address) == sa.func.lower(_PAYMENTS.c.merchant_address),
            _ACCOUNTS.c.merchant_id == merchant_id,
        )
        stmt = stmt.where(
            sa.or_(
                invoices_of_merchant,
                sa.and_(_PAYMENTS.c.invoice_id.is_(None), address_of_merchant),
            )
        )
    return stmt


def cursor(
    session: Session, chain_id: int, router: str, start_block: int, now: datetime
) -> tuple[int, int]:
    """``(id, last_block)`` of the checkpoint row, created at ``start_block - 1`` on first use;
    locked for update. Core, not the ORM: it is read and written in every step. Two indexers
    starting at once on PostgreSQL both insert: the second's insert does nothing and waits
    for the first's row, which it then reads (and locks) like any step."""
    conn = session.connection()
    params = {"chain_id": chain_id, "router": router}
    row = conn.execute(_CURSOR, params).first()
    if row is None:
        values = params | {"last_block": start_block - 1, "updated_at": now}
        conn.execute(_INSERT_CURSOR[conn.dialect.name], values)
        row = conn.execute(_CURSOR, params).one()
    return int(row.id), int(row.last_block)


def save_cursor(session: Session, cursor_id: int, last_block: int, now: datetime) -> None:
    params = {"cursor_id": cursor_id, "new_last_block": last_block, "now": now}
    session.connection().execute(_SAVE_CURSOR, params)


def save_blocks(session: Session, cursor_id: int, blocks: dict[int, str]) -> None:
    """Store processed blocks' hashes (one insert; a block stored already is kept)."""
    rows = [
        {"cursor_id": cursor_id, "number": number, "hash": block_hash}
        for number, block_hash in sorted(blocks.items())
    ]
    if rows:
        execute_many(session, _INSERT_BLOCK[session.connection().dialect.name], rows)


def indexed_top(session: Session, chain_id: int, router: str) -> list[tuple[int, str]]:
    """``(number, hash)`` of the highest blocks indexed for ``router`` on ``chain_id`` (none:
    never indexed); reads only, unlike :func:`cursor`."""
    stmt = sa.select(_CURSORS.c.id).where(
        _CURSORS.c.chain_id == chain_id, _CURSORS.c.router == router
    )
    cursor_id = session.connection().execute(stmt).scalar()
    return [] if cursor_id is None else top_blocks(session, int(cursor_id))


def top_blocks(session: Session, cursor_id: int) -> list[tuple[int, str]]:
    """``(number, hash)`` of a cursor's two highest processed blocks, highest first."""
    rows = session.connection().execute(_TOP_BLOCKS, {"cursor_id": cursor_id})
    return [(int(row.number), str(row.hash)) for row in rows]


def recent_blocks(session: Session, cursor_id: int, limit: int) -> Sequence[IndexedBlock]:
    stmt = (
        select(IndexedBlock)
        .where(IndexedBlock.cursor_id == cursor_id)
        .order_by(col(IndexedBlock.number).desc())
        .limit(limit)
    )
    return session.exec(stmt).all()


def delete_blocks_after(session: Session, cursor_id: int, number: int) -> None:
    table = IndexedBlock.__table__  # type: ignore[attr-defined]
    session.execute(sa.delete(table).where(table.c.cursor_id == cursor_id, table.c.number > number))


def prune_blocks(session: Session, cursor_id: int, keep_from: int) -> None:
    """Forget the blocks under ``keep_from`` but the highest (the window's anchor)."""
    session.connection().execute(_PRUNE, {"cursor_id": cursor_id, "keep_from": keep_from})
