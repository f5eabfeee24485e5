"""Attack-audit suite. May import every package; nothing imports it."""

__all__: list[str] = []
