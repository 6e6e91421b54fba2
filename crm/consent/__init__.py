"""consent domain."""

__all__: list[str] = []
