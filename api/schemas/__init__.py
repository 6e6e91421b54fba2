"""Request and response bodies of the /v1 resource routes (one module per area)."""

__all__: list[str] = []
