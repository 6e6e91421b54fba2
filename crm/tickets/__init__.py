"""tickets domain."""

__all__: list[str] = []
