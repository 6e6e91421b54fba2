"""Request bodies whose JSON holds a lone UTF-16 surrogate are refused before a route runs.

``"\\ud800"`` is valid JSON syntax but no Unicode text: UTF-8 cannot encode it, so psycopg
refuses it on PostgreSQL, and SQLite stores it and every later response that renders the value
fails (a 500 for each read of the row). A pair (``"\\ud83d\\ude00"``, as ``ensure_ascii``
encoders write an emoji) decodes to one character and is accepted.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from api.errors import InvalidRequest

__all__ = ["refuse_lone_surrogates"]

#: A ``\\uD800`` to ``\\uDFFF`` escape: only a body with one is parsed again and walked.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _holds_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:  # iterative: the parser allows deeper nesting than a recursive walk would
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def refuse_lone_surrogates(request: Request) -> None:
    """An app-wide dependency: ``400`` for a JSON body with a lone surrogate in any string."""
    body = await request.body()  # FastAPI has read it already: cached, not read again
    if not body or _SURROGATE_ESCAPE.search(body) is None:
        return
    try:
        value = await request.json()
    except ValueError:  # not JSON at all: the route's own parsing answers
        return
    if _holds_surrogate(value):
        raise InvalidRequest(
            "Text may not contain lone UTF-16 surrogates (\\ud800-\\udfff).",
            code="invalid_request",
        )
