"""contacts domain."""

__all__: list[str] = []
