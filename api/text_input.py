"""Request bodies whose JSON holds text no database stores alike are refused before a route
runs: a lone UTF-16 surrogate or a NUL character, in any string.

``"\\ud800"`` is valid JSON syntax but no Unicode text: UTF-8 cannot encode it, so psycopg
refuses it on PostgreSQL, and SQLite stores it and every later response that renders the value
fails (a 500 for each read of the row). A pair (``"\\ud83d\\ude00"``, as ``ensure_ascii``
encoders write an emoji) decodes to one character and is accepted. ``"\\u0000"`` is refused by
PostgreSQL's text columns and stored by SQLite (and inside encrypted fields by both): refused
here on either, so that the API answers alike whatever the database.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from api.errors import InvalidRequest

__all__ = ["refuse_unstorable_text"]

#: A ``\\uD800``-``\\uDFFF`` or ``\\u0000`` escape: only a body with one is parsed again.
_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHY = {
    "nul": "Text may not contain NUL (0x00) characters.",  # as PostgreSQL's refusal is shown
    "surrogate": "Text may not contain lone UTF-16 surrogates (\\ud800-\\udfff).",
}


def _unstorable(value: Any) -> str | None:
    stack = [value]
    while stack:  # iterative: the parser allows deeper nesting than a recursive walk would
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "nul"
            if _SURROGATE.search(item):
                return "surrogate"
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


async def refuse_unstorable_text(request: Request) -> None:
    """An app-wide dependency: ``400`` for a JSON body with a lone surrogate or a NUL in any
    string."""
    body = await request.body()  # FastAPI has read it already: cached, not read again
    if not body or _ESCAPE.search(body) is None:
        return
    try:
        value = await request.json()
    except (ValueError, RecursionError):  # not JSON, or too deep: the route's parsing answers
        return
    kind = _unstorable(value)
    if kind is not None:
        raise InvalidRequest(_WHY[kind], code="invalid_request")
