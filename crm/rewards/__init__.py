"""rewards domain."""

__all__: list[str] = []
