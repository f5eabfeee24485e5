"""Datasets read one client at a time: the outline a pool's driver holds.

The outline must give exactly the split the whole dataset gives (the same training
population in the same order, the same evaluation clients' data) while holding only
the evaluation clients and one training client, and a generated preset must never
have more than one client's arrays alive during a pass.
"""

from __future__ import annotations

import gc
import hashlib
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fml.data import (
    ClientData,
    DatasetStream,
    FederatedDataset,
    InputKind,
    make_synthetic,
    stream_preset,
    stream_synthetic,
)
from secure_fml.errors import ConfigError, DataError


def _digest(ds: FederatedDataset) -> str:
    h = hashlib.sha256()
    for c in ds.clients:
        h.update(c.client_id.encode())
        h.update(c.x.tobytes())
        h.update(c.y.tobytes())
    return h.hexdigest()


def test_synthetic_known_answer_is_unchanged_by_streaming() -> None:
    # Digests of make_synthetic before it was rebuilt on stream_synthetic: the data of
    # every committed synthetic result stays the same.
    assert _digest(make_synthetic()) == (
        "2bd30eba87d9c4b7de79c0063eb6acf48b869274fcebe81d17b34244877ffeab"
    )
    kw = {"num_clients": 37, "seed": 5, "max_samples": 60, "alpha": 0.5, "beta": 0.0}
    assert _digest(make_synthetic(**kw)) == (
        "765a51e91b7ba2cfa8966c20c3e7a6edf0375820308cd8242c6062a0f457cdcd"
    )
    # Every pass regenerates the same clients.
    s = stream_synthetic(**kw)
    assert _digest(s.materialize()) == _digest(s.materialize())


def _eager(
    ds: FederatedDataset,
    min_samples: int,
    fractions: tuple[float, ...],
    seed: int,
    leave_out: str | None,
) -> tuple[tuple[str, ...], tuple[ClientData, ...], tuple[ClientData, ...]]:
    kept = ds.filter_min_samples(min_samples)
    split = (
        kept.leave_one_out(leave_out)
        if leave_out is not None
        else kept.split_clients(fractions=fractions, seed=seed)
    )
    return tuple(c.client_id for c in split.train), split.val, split.test


def _same(a: tuple[ClientData, ...], b: tuple[ClientData, ...]) -> None:
    assert [c.client_id for c in a] == [c.client_id for c in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.y, y.y)


@settings(max_examples=40, deadline=None)
@given(
    clients=st.integers(3, 40),
    data_seed=st.integers(0, 2**16),
    split_seed=st.integers(0, 2**16),
    fractions=st.sampled_from(
        [(0.8, 0.1, 0.1), (1.0, 0.0, 0.0), (0.5, 0.25, 0.25), (0.6, 0.0, 0.4)]
    ),
    min_samples=st.sampled_from([2, 30, 45]),
    leave_one=st.booleans(),
)
def test_outline_is_the_split_of_the_whole_dataset(
    clients: int,
    data_seed: int,
    split_seed: int,
    fractions: tuple[float, ...],
    min_samples: int,
    leave_one: bool,
) -> None:
    # min_samples 30-45 against sizes 20-60 drops some clients before the split.
    kw = {"num_clients": clients, "seed": data_seed, "min_samples": 20, "max_samples": 60}
    whole = make_synthetic(**kw)
    kept_ids = [c.client_id for c in whole.clients if len(c) >= min_samples]
    if not kept_ids:
        with pytest.raises(DataError, match="no client has"):
            stream_synthetic(**kw).outline(min_samples=min_samples)
        return
    leave_out = kept_ids[data_seed % len(kept_ids)] if leave_one else None
    try:
        want = _eager(whole, min_samples, fractions, split_seed, leave_out)
    except ConfigError:  # too few clients for this split: the outline refuses alike
        with pytest.raises(ConfigError):
            stream_synthetic(**kw).outline(
                min_samples=min_samples, fractions=fractions, seed=split_seed, leave_out=leave_out
            )
        return
    got = stream_synthetic(**kw).outline(
        min_samples=min_samples, fractions=fractions, seed=split_seed, leave_out=leave_out
    )
    train_ids, val, test = want
    assert got.train_ids == train_ids
    _same(got.split.val, val)
    _same(got.split.test, test)
    _same(got.split.train, tuple(whole.client(c) for c in train_ids[:1]))
    # Only the evaluation clients and the first training client are held.
    held = {c.client_id for c in got.held.clients}
    assert held == {*train_ids[:1], *(c.client_id for c in val), *(c.client_id for c in test)}
    assert got.held.name == whole.name and got.held.metadata == whole.metadata


def test_a_generated_preset_holds_one_client_at_a_time() -> None:
    alive = 0
    most = 0

    def gone() -> None:
        nonlocal alive
        alive -= 1

    inner = stream_synthetic(num_clients=20, max_samples=60)

    def clients() -> Iterator[ClientData]:
        nonlocal most, alive
        for c in inner.clients():
            alive += 1
            weakref.finalize(c, gone)
            gc.collect()
            most = max(most, alive)
            yield c
            del c

    s = DatasetStream(
        name=inner.name, num_classes=inner.num_classes, input_kind=inner.input_kind, clients=clients
    )
    out = s.outline(min_samples=2, fractions=(1.0, 0.0, 0.0))
    assert len(out.train_ids) == 20 and len(out.held.clients) == 1
    # The clients kept, the one the consumer's loop still names and the one being made:
    # never the population.
    assert most <= len(out.held.clients) + 2


def test_stream_checks_every_client_as_the_dataset_does() -> None:
    good = ClientData("a", np.zeros((3, 2), np.float32), np.array([0, 1, 0]))
    bad_label = ClientData("b", np.zeros((3, 2), np.float32), np.array([0, 5, 0]))
    bad_shape = ClientData("c", np.zeros((3, 4), np.float32), np.array([0, 1, 0]))
    nan = ClientData("d", np.full((3, 2), np.nan, np.float32), np.array([0, 1, 0]))
    for bad, msg in [
        (bad_label, "label out of range"),
        (bad_shape, "sample shape"),
        (nan, "NaN or Inf"),
        (good, "duplicate client id"),
    ]:
        s = DatasetStream(
            name="t",
            num_classes=2,
            input_kind=InputKind.TABULAR,
            clients=lambda b=bad: iter([good, b]),
        )
        with pytest.raises(DataError, match=msg):
            s.survey()
        with pytest.raises(DataError, match=msg):
            FederatedDataset("t", (good, bad), 2, InputKind.TABULAR)
    empty = DatasetStream(
        name="t", num_classes=2, input_kind=InputKind.TABULAR, clients=lambda: iter(())
    )
    with pytest.raises(DataError, match="no clients"):
        empty.survey()


def test_stream_preset_matches_load_preset_and_refuses_bad_options() -> None:
    from secure_fml.data import load_preset

    s = stream_preset("synthetic", num_clients=9, max_samples=60)
    assert _digest(s.materialize()) == _digest(
        load_preset("synthetic", num_clients=9, max_samples=60)
    )
    with pytest.raises(ConfigError, match="unknown option"):
        stream_preset("synthetic", bogus=1)
    with pytest.raises(ConfigError, match="min_samples"):
        s.outline(min_samples=1)
