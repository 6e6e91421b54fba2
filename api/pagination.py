"""Cursor pagination, newest first (Stripe style).

Route side::

    @router.get("/things", response_model=ListResponse[ThingPublic])
    def list_things(page: PageDep, session: SessionDep, key: CurrentKey, request: Request):
        rows, has_more = paginate(session, repository.scoped_select(key.scope, key.livemode),
                                  created_at=Thing.created_at, id=Thing.id, page=page)
        return ListResponse.build([ThingPublic.of(r) for r in rows], has_more, request)

``paginate`` orders by ``(created_at DESC, id DESC)`` and applies the keyset condition
``(created_at, id) < cursor``. The cursor row is looked up with the SAME (scoped) statement, so a
``starting_after`` id from another merchant is rejected exactly like a missing one (404
``resource_missing``, ``param="starting_after"``): scoping can never leak through the cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import Session

from api.errors import InvalidRequest, NotFound

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_ID",
    "MAX_LIMIT",
    "ListResponse",
    "PageDep",
    "PageParams",
    "paginate",
    "parse_id",
]

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PageParams:
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None


async def page_params(
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_LIMIT, description="How many objects to return (1-100).", examples=[10]),
    ] = DEFAULT_LIMIT,
    starting_after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=64,
            pattern=r"^[A-Za-z0-9_]+$",
            description="An object id from the previous page: return the objects after it "
            "(older ones).",
        ),
    ] = None,
    ending_before: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> PageParams:
    if ending_before is not None:  # a Stripe client paging backwards got page 1 for ever
        raise InvalidRequest(
            "ending_before is not supported: page forward with starting_after",
            param="ending_before",
        )
    return PageParams(limit=limit, starting_after=starting_after)


PageDep = Annotated[PageParams, Depends(page_params)]


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = Field(default="list", description='Always "list".')
    data: list[T]
    has_more: bool = Field(description="Whether more objects follow this page.")
    url: str = Field(description="The URL of this list, e.g. `/v1/webhook_endpoints`.")

    @classmethod
    def build(cls, data: Sequence[Any], has_more: bool, url: str | Request) -> ListResponse[Any]:
        path = url.url.path if isinstance(url, Request) else url
        return cls(data=list(data), has_more=has_more, url=path)


#: The largest id a row can have: the id columns are INTEGER on PostgreSQL, which refuses a
#: larger value in a comparison (a 500) where SQLite would just find nothing.
MAX_ID = 2**31 - 1


def parse_id(value: str | None) -> int | None:
    """An ASCII decimal id from 1 to :data:`MAX_ID`, else None (``"¹".isdigit()`` is True!)."""
    if value is None or not 1 <= len(value) <= 10 or not value.isascii() or not value.isdigit():
        return None
    parsed = int(value)
    return parsed if 1 <= parsed <= MAX_ID else None


def paginate(
    session: Session,
    stmt: Any,
    *,
    created_at: Any,
    id: Any,
    page: PageParams,
    cursor_in: Any = None,
) -> tuple[list[Any], bool]:
    """Apply keyset pagination to ``stmt`` (a scoped ``select`` of one entity).

    Returns ``(rows, has_more)``. ``created_at``/``id`` are the model's columns
    (``Model.created_at``, ``Model.id``). ``cursor_in`` is the caller-scoped select *without*
    the list's filters, for lists filtered on something that changes (an invoice's state): the
    ``starting_after`` object is looked up there, so one that left the filter since the last
    page (paid, sent, marked) is still a place to continue from, not a 404.
    """
    created_col: Any = created_at
    id_col: Any = id
    if page.starting_after is not None:
        missing = NotFound(f"No such object: '{page.starting_after}'.", param="starting_after")
        cursor_id: Any = page.starting_after
        try:
            integer_keys = getattr(id_col.type, "python_type", str) is int
        except NotImplementedError:
            integer_keys = False
        if integer_keys:
            cursor_id = parse_id(cursor_id)  # a 64-digit cursor overflowed SQLite's binding
            if cursor_id is None:
                raise missing
        within = stmt if cursor_in is None else cursor_in
        cursor = session.execute(
            within.with_only_columns(created_col, id_col).where(id_col == cursor_id)
        ).first()
        if cursor is None:
            raise missing
        c_created, c_id = cursor
        stmt = stmt.where(
            sa.or_(created_col < c_created, sa.and_(created_col == c_created, id_col < c_id))
        )
    stmt = stmt.order_by(created_col.desc(), id_col.desc()).limit(page.limit + 1)
    rows = list(session.exec(stmt).all())
    return rows[: page.limit], len(rows) > page.limit
