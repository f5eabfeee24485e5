"""Federated dataset types: clients -> local arrays, client splits, support/query splits.

Every array is validated on construction so that a bad file fails with a
:class:`DataError` naming the client, never with a stack trace from deep inside
a training step.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from privacy.errors import ConfigError, DataError

__all__ = [
    "ClientData",
    "ClientSplit",
    "DatasetOutline",
    "DatasetStream",
    "FederatedDataset",
    "InputKind",
    "check_client",
    "split_indices",
]


class InputKind(enum.Enum):
    """What a sample looks like; selects the default model."""

    IMAGE = "image"  # float32 (n, H, W), values in [0, 1]
    SEQUENCE = "sequence"  # int64 (n, L) token ids
    TABULAR = "tabular"  # float32 (n, F)


@dataclass(frozen=True)
class ClientData:
    """One site's local data. ``x`` has one row per sample, ``y`` holds int64 labels.

    ``units`` (optional, one id per row, int or str) names the privacy unit of
    each row for record-level DP: the rows of one patient or customer share an
    id and are sampled and clipped together. ``None``: every row is its own unit.
    """

    client_id: str
    x: np.ndarray
    y: np.ndarray
    units: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.x, np.ndarray) or not isinstance(self.y, np.ndarray):
            raise DataError(f"client {self.client_id!r}: x and y must be numpy arrays")
        if self.y.ndim != 1:
            raise DataError(f"client {self.client_id!r}: y must be 1-D, got shape {self.y.shape}")
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"client {self.client_id!r}: x has {self.x.shape[0]} rows but y has "
                f"{self.y.shape[0]}"
            )
        if self.y.shape[0] == 0:
            raise DataError(f"client {self.client_id!r} has no samples")
        if self.units is not None:
            u = self.units
            if not isinstance(u, np.ndarray) or u.ndim != 1 or u.shape[0] != self.y.shape[0]:
                raise DataError(
                    f"client {self.client_id!r}: units must be a 1-D array with one id per row"
                )
            if u.dtype.kind not in "iuUS":
                raise DataError(
                    f"client {self.client_id!r}: unit ids must be integers or strings, "
                    f"got dtype {u.dtype}"
                )
            if u.dtype.kind in "US" and (u == u.dtype.type("")).any():
                raise DataError(f"client {self.client_id!r}: empty unit id")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> ClientData:
        units = None if self.units is None else self.units[idx]
        return ClientData(self.client_id, self.x[idx], self.y[idx], units)

    @property
    def num_units(self) -> int:
        """Number of privacy units (distinct ``units``, or rows when there are none)."""
        return len(self) if self.units is None else int(np.unique(self.units).size)

    def split_support_query(
        self, *, support_fraction: float, rng: np.random.Generator
    ) -> tuple[ClientData, ClientData]:
        """Disjoint random split: ``support_fraction`` of the samples form the support set.

        Both parts keep at least one sample, so a client with n >= 2 always
        yields a non-empty support set (for adaptation) and query set (for the
        meta-loss or evaluation). Adaptation never sees query points.
        """
        if not 0.0 < support_fraction < 1.0:
            raise ConfigError(f"support_fraction must be in (0, 1), got {support_fraction}")
        n = len(self)
        if n < 2:
            raise DataError(f"client {self.client_id!r} needs >= 2 samples to split, has {n}")
        perm = rng.permutation(n)
        k = min(max(1, round(support_fraction * n)), n - 1)
        return self.subset(np.sort(perm[:k])), self.subset(np.sort(perm[k:]))


@dataclass(frozen=True)
class ClientSplit:
    """Clients partitioned into disjoint train / validation / test (unseen) groups."""

    train: tuple[ClientData, ...]
    val: tuple[ClientData, ...]
    test: tuple[ClientData, ...]


@dataclass(frozen=True)
class FederatedDataset:
    """A naturally partitioned federated dataset."""

    name: str
    clients: tuple[ClientData, ...]
    num_classes: int
    input_kind: InputKind
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.clients:
            raise DataError(f"dataset {self.name!r} has no clients")
        if self.num_classes < 2:
            raise DataError(f"dataset {self.name!r}: num_classes must be >= 2")
        seen: set[str] = set()
        shape = self.clients[0].x.shape[1:]
        for c in self.clients:
            check_client(self.name, c, seen=seen, shape=shape, num_classes=self.num_classes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.clients[0].x.shape[1:])

    @property
    def num_samples(self) -> int:
        return sum(len(c) for c in self.clients)

    def client(self, client_id: str) -> ClientData:
        for c in self.clients:
            if c.client_id == client_id:
                return c
        raise _no_client(self.name, client_id, [c.client_id for c in self.clients[:8]])

    def with_clients(self, clients: Iterable[ClientData]) -> FederatedDataset:
        return FederatedDataset(
            self.name,
            tuple(clients),
            self.num_classes,
            self.input_kind,
            self.feature_names,
            self.class_names,
            dict(self.metadata),
        )

    def filter_min_samples(self, min_samples: int) -> FederatedDataset:
        """Drop clients with fewer than ``min_samples`` samples (the paper's filter)."""
        sizes = [len(c) for c in self.clients]
        keep = _min_samples_kept(self.name, sizes, min_samples)
        return self.with_clients(self.clients[i] for i in keep)

    def split_clients(
        self, *, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
    ) -> ClientSplit:
        """Seeded random split of *clients* (not samples) into train / val / test groups."""
        train, val, test = split_indices(
            len(self.clients), fractions=fractions, seed=seed, name=self.name
        )
        return ClientSplit(
            train=tuple(self.clients[i] for i in train),
            val=tuple(self.clients[i] for i in val),
            test=tuple(self.clients[i] for i in test),
        )

    def leave_one_out(self, client_id: str) -> ClientSplit:
        """All other clients train; ``client_id`` is the new, unseen site (test)."""
        held = self.client(client_id)
        rest = tuple(c for c in self.clients if c.client_id != client_id)
        return ClientSplit(train=rest, val=(), test=(held,))


def _min_samples_kept(dataset: str, sizes: Sequence[int], min_samples: int) -> list[int]:
    """Positions of the clients with at least ``min_samples`` samples (the paper's
    filter); refuses a ``min_samples`` below 2 and a filter that keeps no client."""
    if min_samples < 2:
        raise ConfigError(f"min_samples must be >= 2, got {min_samples}")
    kept = [i for i, n in enumerate(sizes) if n >= min_samples]
    if not kept:
        raise DataError(f"dataset {dataset!r}: no client has >= {min_samples} samples")
    return kept


def _no_client(dataset: str, client_id: str, known: Sequence[str]) -> DataError:
    return DataError(
        f"dataset {dataset!r} has no client {client_id!r} (e.g. {', '.join(known)}, ...)"
    )


def check_client(
    dataset: str,
    c: ClientData,
    *,
    seen: set[str],
    shape: tuple[int, ...],
    num_classes: int,
) -> None:
    """The dataset-level checks of one client (its own are in :class:`ClientData`):
    a new id (added to ``seen``), the dataset's sample shape, labels in range, finite
    features. Raises :class:`DataError` naming the client."""
    if c.client_id in seen:
        raise DataError(f"dataset {dataset!r}: duplicate client id {c.client_id!r}")
    seen.add(c.client_id)
    if c.x.shape[1:] != shape:
        raise DataError(
            f"client {c.client_id!r}: sample shape {c.x.shape[1:]} differs from {shape}"
        )
    if c.y.min() < 0 or c.y.max() >= num_classes:
        raise DataError(
            f"client {c.client_id!r}: label out of range [0, {num_classes}) "
            f"(min {int(c.y.min())}, max {int(c.y.max())})"
        )
    if np.issubdtype(c.x.dtype, np.floating) and not np.isfinite(c.x).all():
        raise DataError(
            f"client {c.client_id!r}: features contain NaN or Inf; choose an "
            "imputation (e.g. impute=Impute.MEDIAN) for tabular data"
        )


def split_indices(
    n: int, *, fractions: Sequence[float], seed: int, name: str
) -> tuple[list[int], list[int], list[int]]:
    """The seeded client split of :meth:`FederatedDataset.split_clients`, by position:
    (train, val, test) indices into the dataset's clients."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"client_fractions must be 3 non-negative numbers summing to 1, got {list(fractions)}"
        )
    perm = [int(i) for i in np.random.default_rng(seed).permutation(n)]
    n_val = round(fractions[1] * n)
    n_test = round(fractions[2] * n)
    if fractions[2] > 0 and n_test == 0:
        n_test = 1
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ConfigError(f"dataset {name!r} has {n} clients: too few for split {list(fractions)}")
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


@dataclass(frozen=True, kw_only=True)
class DatasetStream:
    """A federated dataset read one client at a time: ``clients()`` starts a new pass
    over the clients, in the dataset's order, and holds one client's arrays at once.

    A simulation's driver uses it to learn the population (:meth:`survey`) and keep
    only the clients it evaluates on (:meth:`materialize` with ``keep``), while the
    workers that train hold the partitions.
    """

    name: str
    num_classes: int
    input_kind: InputKind
    clients: Callable[[], Iterator[ClientData]]
    feature_names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def of(cls, dataset: FederatedDataset) -> DatasetStream:
        """An in-memory dataset as a stream (its clients are already held)."""
        return cls(
            name=dataset.name,
            num_classes=dataset.num_classes,
            input_kind=dataset.input_kind,
            clients=lambda: iter(dataset.clients),
            feature_names=dataset.feature_names,
            class_names=dataset.class_names,
            metadata=dict(dataset.metadata),
        )

    def survey(self) -> tuple[tuple[str, int], ...]:
        """(client id, number of samples) of every client, in order, after the checks
        :class:`FederatedDataset` makes of each client."""
        if self.num_classes < 2:
            raise DataError(f"dataset {self.name!r}: num_classes must be >= 2")
        seen: set[str] = set()
        shape: tuple[int, ...] | None = None
        out = []
        for c in self.clients():
            if shape is None:
                shape = tuple(c.x.shape[1:])
            check_client(self.name, c, seen=seen, shape=shape, num_classes=self.num_classes)
            out.append((c.client_id, len(c)))
        if not out:
            raise DataError(f"dataset {self.name!r} has no clients")
        return tuple(out)

    def outline(
        self,
        *,
        min_samples: int,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        leave_out: str | None = None,
    ) -> DatasetOutline:
        """The client split that ``filter_min_samples(min_samples)`` then
        ``split_clients(fractions=..., seed=...)`` (or ``leave_one_out(leave_out)``)
        gives on the whole dataset, holding only the evaluation clients (validation and
        test) and the first training client (a sample for the model) in memory. Two
        passes over the clients."""
        survey = self.survey()
        keep = _min_samples_kept(self.name, [n for _, n in survey], min_samples)
        ids = [survey[i][0] for i in keep]
        if leave_out is not None:
            if leave_out not in ids:
                raise _no_client(self.name, leave_out, ids[:8])
            train = [c for c in ids if c != leave_out]
            val: list[str] = []
            test = [leave_out]
        else:
            t, v, e = split_indices(len(ids), fractions=fractions, seed=seed, name=self.name)
            train, val, test = [ids[i] for i in t], [ids[i] for i in v], [ids[i] for i in e]
        held = self.materialize(keep={*train[:1], *val, *test})
        by_id = {c.client_id: c for c in held.clients}
        return DatasetOutline(
            train_ids=tuple(train),
            held=held,
            split=ClientSplit(
                train=tuple(by_id[c] for c in train[:1]),
                val=tuple(by_id[c] for c in val),
                test=tuple(by_id[c] for c in test),
            ),
        )

    def materialize(self, keep: Container[str] | None = None) -> FederatedDataset:
        """The clients named in ``keep`` (all: None) as a :class:`FederatedDataset`."""
        return FederatedDataset(
            self.name,
            tuple(c for c in self.clients() if keep is None or c.client_id in keep),
            self.num_classes,
            self.input_kind,
            self.feature_names,
            self.class_names,
            dict(self.metadata),
        )


@dataclass(frozen=True)
class DatasetOutline:
    """A dataset's client split with only some clients' data held (see
    :meth:`DatasetStream.outline`): every training client's id, and the data of the
    evaluation clients and of the first training client."""

    train_ids: tuple[str, ...]
    held: FederatedDataset  # the clients below, with the dataset's name and metadata
    split: ClientSplit  # train: the first training client (if any); val and test whole
