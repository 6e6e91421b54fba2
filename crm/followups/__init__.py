"""followups domain."""

__all__: list[str] = []
