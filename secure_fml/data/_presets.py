"""Named dataset presets: the few-shot default, FEMNIST, Shakespeare, heart, Synthetic(α, β).

A preset is a registry entry: a name, a description, the files it needs
relative to a data root, and a loader that takes the root and keyword-only
options. :func:`load_preset` rejects unknown names and options (listing the
valid ones) and reports missing files with the paths it looked at;
:func:`describe_presets` feeds the ``secure-fml datasets`` command.

The data root is, in order: the ``root`` argument, the ``SECURE_FML_DATA``
environment variable, ``./data``, then ``../shared/data`` (relative to the
working directory).
"""

from __future__ import annotations

import inspect
import logging
import os
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privacy.errors import ConfigError, DataError

from ._core import ClientData, ClientSplit, DatasetStream, FederatedDataset, InputKind
from ._fewshot import make_fewshot
from ._loaders import Impute, PixelTransform, _npz_array, impute_and_standardize, load_npz
from ._synthetic import make_synthetic, stream_synthetic

__all__ = [
    "DATA_ROOT_ENV",
    "HELDOUT_METADATA_KEY",
    "PresetInfo",
    "describe_presets",
    "load_preset",
    "preset_names",
    "resolve_data_root",
    "split_clients_with_heldout",
]

logger = logging.getLogger(__name__)

DATA_ROOT_ENV = "SECURE_FML_DATA"
#: Metadata key listing (comma-separated) clients that must only ever be test clients.
HELDOUT_METADATA_KEY = "heldout_clients"

FEMNIST_FILE = "femnist/femnist_leaf_writers.npz"
FEMNIST_PARTIAL_FILE = "femnist/femnist_leaf_partial_writers.npz"
SHAKESPEARE_FILE = "shakespeare/shakespeare_roles.npz"
HEART_FILE = "heart_disease/heart_disease_4sites.npz"

# LEAF / EMNIST-byclass label order: digits, upper case, lower case.
FEMNIST_CLASSES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)


# ---------------------------------------------------------------------------------------
# Data root
# ---------------------------------------------------------------------------------------


def _root_candidates(root: str | Path | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return [Path(env)]
    cwd = Path.cwd()
    return [cwd / "data", cwd.parent / "shared" / "data"]


def resolve_data_root(root: str | Path | None = None) -> Path | None:
    """The data root that will be used, or None when no candidate folder exists."""
    return next((p for p in _root_candidates(root) if p.is_dir()), None)


# ---------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------


def _femnist(
    root: Path, *, include_partial: bool = False, pixels: PixelTransform | str = "invert"
) -> FederatedDataset:
    """396 complete writers; optionally + 314 partial writers marked as held out.

    ``pixels`` (default ``invert``: ``1 - x``, background 0; ``none``: LEAF's encoding,
    background 1.0) is recorded as ``metadata['pixel_transform']`` and hence in the
    checkpoint's preprocessing spec.
    """
    transform = PixelTransform.parse(pixels)
    ds = _femnist_raw(root, include_partial=include_partial)
    clients = [
        ClientData(c.client_id, transform.apply(c.x, where=f"writer {c.client_id!r}"), c.y)
        for c in ds.clients
    ]
    out = ds.with_clients(clients)
    out.metadata["pixel_transform"] = transform.value
    return out


def _femnist_raw(root: Path, *, include_partial: bool) -> FederatedDataset:
    ds = load_npz(
        root / FEMNIST_FILE,
        name="femnist",
        input_kind=InputKind.IMAGE,
        num_classes=62,
        client_names_key="writer_ids",
        class_names=FEMNIST_CLASSES,
    )
    if not include_partial:
        return ds
    partial = load_npz(
        root / FEMNIST_PARTIAL_FILE,
        name="femnist_partial",
        input_kind=InputKind.IMAGE,
        num_classes=62,
        client_names_key="writer_ids",
    )
    merged = ds.with_clients((*ds.clients, *partial.clients))
    merged.metadata[HELDOUT_METADATA_KEY] = ",".join(c.client_id for c in partial.clients)
    return merged


def _shakespeare(
    root: Path,
    *,
    max_clients: int | None = None,
    max_samples_per_client: int | None = None,
    seq_len: int = 80,
    seed: int = 0,
) -> FederatedDataset:
    """Next-character windows rebuilt from the per-role text for the selected roles only.

    The stored ``x`` (335 MB decompressed) is never read. ``max_clients`` picks
    that many roles uniformly at random (seeded); ``max_samples_per_client``
    keeps a seeded random subset of each role's windows (in temporal order).
    All 1,130 roles at full size are about 2.7 GB as int64: cap them for quick runs.
    """
    for opt, val in (
        ("max_clients", max_clients),
        ("max_samples_per_client", max_samples_per_client),
    ):
        if val is not None and (not isinstance(val, int) or val < 1):
            raise ConfigError(f"{opt} must be a positive integer or None, got {val!r}")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"seq_len must be a positive integer, got {seq_len!r}")
    path = root / SHAKESPEARE_FILE
    where = str(path)
    keys = ("text_ids", "text_offsets", "client_play", "client_speaker", "vocab")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
        text = _npz_array(z, "text_ids", where)
        offsets = _npz_array(z, "text_offsets", where).astype(np.int64)
        plays = [str(s) for s in _npz_array(z, "client_play", where)]
        speakers = [str(s) for s in _npz_array(z, "client_speaker", where)]
        vocab = str(_npz_array(z, "vocab", where)[()])
    n_roles = len(plays)
    if (
        offsets.shape != (n_roles + 1,)
        or offsets[0] != 0
        or offsets[-1] != text.shape[0]
        or np.any(np.diff(offsets) < 0)
    ):
        raise DataError(f"{where}: text_offsets do not partition text_ids over {n_roles} roles")
    if text.size and int(text.max()) >= len(vocab):
        raise DataError(f"{where}: text_ids exceed the {len(vocab)}-character vocab")

    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(np.diff(offsets) > seq_len)  # at least one window
    if max_clients is not None and max_clients < eligible.size:
        eligible = np.sort(rng.choice(eligible, size=max_clients, replace=False))
    clients: list[ClientData] = []
    for c in eligible:
        stream = text[offsets[c] : offsets[c + 1]]
        windows = np.lib.stride_tricks.sliding_window_view(stream, seq_len + 1)
        if max_samples_per_client is not None and windows.shape[0] > max_samples_per_client:
            keep = np.sort(rng.choice(windows.shape[0], size=max_samples_per_client, replace=False))
            windows = windows[keep]
        clients.append(
            ClientData(
                f"{plays[c]} / {speakers[c]}",
                windows[:, :seq_len].astype(np.int64),
                windows[:, seq_len].astype(np.int64),
            )
        )
    if not clients:
        raise DataError(f"{where}: no role has more than seq_len={seq_len} characters")
    return FederatedDataset(
        "shakespeare",
        tuple(clients),
        len(vocab),
        InputKind.SEQUENCE,
        class_names=tuple(vocab),
        metadata={"source": where, "seq_len": str(seq_len), "vocab": vocab},
    )


def _heart(
    root: Path,
    *,
    impute: Impute = Impute.MEDIAN,
    standardize: bool = True,
    complete_rows_only: bool = False,
    features: Sequence[str] | None = None,
) -> FederatedDataset:
    """4 hospitals, 13 features, binary label; NaN imputed and features scaled per hospital.

    ``complete_rows_only`` keeps the rows with no NaN in the first 10 features
    (FLamby's 740 rows); ``features`` selects columns by name (FLamby uses the
    first 10).
    """
    impute = Impute.parse(impute)
    path = root / HEART_FILE
    where = str(path)
    keys = ("x", "y", "client_id", "feature_names", "client_names", "complete_first10")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in keys if k not in z.files]
        if missing:
            raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
        x, y, cid, fnames, cnames, complete = (_npz_array(z, k, where) for k in keys)
    names = [str(s) for s in fnames]
    if features is not None:
        unknown = [f for f in features if f not in names]
        if unknown:
            raise ConfigError(
                f"features: unknown column(s) {', '.join(unknown)}; available: {', '.join(names)}"
            )
        cols = [names.index(f) for f in features]
        x, names = x[:, cols], [names[j] for j in cols]
    clients: list[ClientData] = []
    for k, site in enumerate(str(s) for s in cnames):
        mask = cid == k
        if complete_rows_only:
            mask &= complete.astype(bool)
        if not mask.any():
            raise DataError(f"{where}: hospital {site!r} has no samples")
        xs = impute_and_standardize(
            x[mask], client_id=site, impute=impute, standardize=standardize, feature_names=names
        )
        clients.append(ClientData(site, xs, y[mask].astype(np.int64)))
    return FederatedDataset(
        "heart",
        tuple(clients),
        2,
        InputKind.TABULAR,
        feature_names=tuple(names),
        class_names=("no disease", "disease"),
        metadata={"source": where, "impute": impute.value, "standardize": str(standardize)},
    )


def _synthetic(root: Path | None, **options: Any) -> FederatedDataset:
    return make_synthetic(**options)


def _synthetic_stream(root: Path | None, **options: Any) -> DatasetStream:
    return stream_synthetic(**options)


def _fewshot(root: Path | None, **options: Any) -> FederatedDataset:
    return make_fewshot(**options)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Preset:
    name: str
    description: str
    files: tuple[str, ...]
    loader: Callable[..., FederatedDataset]
    options: tuple[str, ...]
    #: Reads the dataset one client at a time (None: the loader's dataset, held whole).
    streamer: Callable[..., DatasetStream] | None = None


@dataclass(frozen=True)
class PresetInfo:
    """What ``secure-fml datasets`` shows for one preset."""

    name: str
    description: str
    files: tuple[str, ...]  # required, relative to the data root
    options: tuple[str, ...]  # keyword options accepted by load_preset
    root: Path | None  # the data root that was checked
    present: bool  # all required files exist under root (always True without files)
    missing: tuple[str, ...]  # required files not found


def _options_of(fn: Callable[..., Any]) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


_PRESETS: dict[str, _Preset] = {
    p.name: p
    for p in (
        _Preset(
            "fewshot",
            "the embedded default: 200 generated sites share one representation of 5 "
            "concepts but each names them with its own label permutation, 50 samples per "
            "site (so about 10 support examples); meta-learning matters here; no files needed",
            (),
            _fewshot,
            _options_of(make_fewshot),
        ),
        _Preset(
            "femnist",
            "FEMNIST (LEAF), 396 writers, 60,378 28x28 images in [0,1], 62 classes; "
            "pixels = invert (default: 1 - x, background 0, a deviation from LEAF's "
            "encoding) or none; include_partial adds 314 test-shard-only writers as "
            "held-out clients",
            (FEMNIST_FILE,),
            _femnist,
            _options_of(_femnist),
        ),
        _Preset(
            "shakespeare",
            "Shakespeare next character, 1,130 (play, role) clients, 80-char windows, "
            "73-char vocab (use max_clients / max_samples_per_client)",
            (SHAKESPEARE_FILE,),
            _shakespeare,
            _options_of(_shakespeare),
        ),
        _Preset(
            "heart",
            "UCI heart disease, 4 hospitals (303/294/123/200 patients), 13 features, "
            "binary; NaN imputed per hospital (default median), standardized per hospital",
            (HEART_FILE,),
            _heart,
            _options_of(_heart),
        ),
        _Preset(
            "synthetic",
            "Synthetic(alpha, beta) of FedProx (Li et al. 2020), generated; no files needed",
            (),
            _synthetic,
            _options_of(make_synthetic),
            _synthetic_stream,
        ),
    )
}


def preset_names() -> tuple[str, ...]:
    return tuple(_PRESETS)


def _get(name: str) -> _Preset:
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown dataset preset {name!r}; valid: {', '.join(_PRESETS)}"
        ) from None


def describe_presets(root: str | Path | None = None) -> list[PresetInfo]:
    """Every preset with its files and whether they are present under the data root."""
    resolved = resolve_data_root(root)
    infos = []
    for p in _PRESETS.values():
        missing = tuple(f for f in p.files if resolved is None or not (resolved / f).is_file())
        infos.append(
            PresetInfo(p.name, p.description, p.files, p.options, resolved, not missing, missing)
        )
    return infos


def load_preset(name: str, *, root: str | Path | None = None, **options: Any) -> FederatedDataset:
    """Load preset ``name`` from the data root with keyword ``options``.

    Raises :class:`ConfigError` for an unknown name or option and
    :class:`DataError` when a required file is missing (naming it and the
    folders searched).
    """
    preset, where = _locate(name, root, options)
    return preset.loader(where, **options)


def preset_streams(name: str) -> bool:
    """Whether :func:`stream_preset` reads ``name`` one client at a time (a generated
    preset) rather than loading it whole first."""
    return _get(name).streamer is not None


def stream_preset(name: str, *, root: str | Path | None = None, **options: Any) -> DatasetStream:
    """Preset ``name`` as a :class:`DatasetStream` (the same clients as
    :func:`load_preset`, in the same order). A generated preset streams: one client's
    arrays are held at a time; a preset read from files is loaded whole first (its
    files hold at most a few thousand clients)."""
    preset, where = _locate(name, root, options)
    if preset.streamer is not None:
        return preset.streamer(where, **options)
    return DatasetStream.of(preset.loader(where, **options))


def _locate(
    name: str, root: str | Path | None, options: Mapping[str, Any]
) -> tuple[_Preset, Path | None]:
    """The preset and the data root holding its files (None: it needs none)."""
    preset = _get(name)
    unknown = sorted(set(options) - set(preset.options))
    if unknown:
        raise ConfigError(
            f"dataset preset {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"valid: {', '.join(preset.options) or '(none)'}"
        )
    if not preset.files:
        return preset, None
    candidates = _root_candidates(root)
    for cand in candidates:
        if all((cand / f).is_file() for f in preset.files):
            logger.info("loading preset %s from %s", name, cand)
            return preset, cand
    looked = ", ".join(str(c / f) for c in candidates for f in preset.files)
    raise DataError(
        f"dataset preset {name!r} needs {', '.join(preset.files)} under the data root; "
        f"not found at: {looked} (pass root=... or set {DATA_ROOT_ENV})"
    )


def split_clients_with_heldout(
    dataset: FederatedDataset,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> ClientSplit:
    """Split the regular clients as :meth:`FederatedDataset.split_clients` does, then add
    the clients listed under ``metadata['heldout_clients']`` (e.g. FEMNIST partial
    writers) to the test group only."""
    listed = dataset.metadata.get(HELDOUT_METADATA_KEY, "")
    heldout = set(listed.split(",")) if listed else set()
    regular = [c for c in dataset.clients if c.client_id not in heldout]
    if not regular:
        raise DataError(f"dataset {dataset.name!r}: every client is held out")
    split = dataset.with_clients(regular).split_clients(fractions=fractions, seed=seed)
    extra = tuple(c for c in dataset.clients if c.client_id in heldout)
    return ClientSplit(train=split.train, val=split.val, test=split.test + extra)
