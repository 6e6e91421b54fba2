"""merchants domain."""

__all__: list[str] = []
