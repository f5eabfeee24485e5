"""The public surface of ``secure_fml.data`` is exactly ``__all__``."""

from __future__ import annotations

import secure_fml.data as data


def test_all_names_exist_and_are_sorted_uniquely() -> None:
    assert len(set(data.__all__)) == len(data.__all__)
    for name in data.__all__:
        assert hasattr(data, name), name
    public = {n for n in vars(data) if not n.startswith("_")}
    assert public == set(data.__all__)
