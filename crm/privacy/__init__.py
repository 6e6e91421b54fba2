"""privacy domain."""

__all__: list[str] = []
