"""feedback domain."""

__all__: list[str] = []
