"""CLI command groups mounted by :mod:`api.cli`."""

__all__: list[str] = []
