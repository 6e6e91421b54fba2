"""Root-cause tag normalisation (short lowercase slugs)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from crm.errors import InvalidRequest

__all__ = ["normalise_tags"]

_TAG = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,47}$")


def normalise_tags(tags: Iterable[str] | None, param: str = "tags") -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        raise InvalidRequest("tags must be a list", code="invalid_tags", param=param)
    out: list[str] = []
    for tag in tags:
        t = str(tag).strip().lower()
        if not _TAG.match(t):
            raise InvalidRequest(
                "tags are lowercase slugs of at most 48 chars", code="invalid_tags", param=param
            )
        if t not in out:
            out.append(t)
    if len(out) > 10:
        raise InvalidRequest("at most 10 tags", code="invalid_tags", param=param)
    return out
