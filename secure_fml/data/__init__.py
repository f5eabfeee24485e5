"""Federated datasets: core types, file loaders, named presets and the synthetic default.

Public API (implementation modules are private)::

    FederatedDataset, ClientData, ClientSplit, InputKind     core types (_core)
    DatasetStream                                            one client at a time (_core)
    load_npz, load_leaf_json, load_csv, Impute               loaders (_loaders)
    preprocessing_spec                                       what checkpoints store (_loaders)
    load_preset, stream_preset, describe_presets, ...        presets (_presets)
    make_synthetic, stream_synthetic                         Synthetic(alpha, beta) (_synthetic)
    make_fewshot                                             few-shot label-map family (_fewshot)
"""

from ._core import (
    ClientData,
    ClientSplit,
    DatasetOutline,
    DatasetStream,
    FederatedDataset,
    InputKind,
)
from ._fewshot import make_fewshot
from ._loaders import (
    DEFAULT_MISSING_VALUES,
    LEAF_SHAKESPEARE_VOCAB,
    Impute,
    PixelTransform,
    align_preprocessing,
    impute_and_standardize,
    load_csv,
    load_leaf_json,
    load_npz,
    preprocessing_spec,
)
from ._presets import (
    DATA_ROOT_ENV,
    HELDOUT_METADATA_KEY,
    PresetInfo,
    describe_presets,
    load_preset,
    preset_names,
    preset_streams,
    resolve_data_root,
    split_clients_with_heldout,
    stream_preset,
)
from ._synthetic import make_synthetic, stream_synthetic

__all__ = [
    "DATA_ROOT_ENV",
    "DEFAULT_MISSING_VALUES",
    "HELDOUT_METADATA_KEY",
    "LEAF_SHAKESPEARE_VOCAB",
    "ClientData",
    "ClientSplit",
    "DatasetOutline",
    "DatasetStream",
    "FederatedDataset",
    "Impute",
    "InputKind",
    "PixelTransform",
    "PresetInfo",
    "align_preprocessing",
    "describe_presets",
    "impute_and_standardize",
    "load_csv",
    "load_leaf_json",
    "load_npz",
    "load_preset",
    "make_fewshot",
    "make_synthetic",
    "preprocessing_spec",
    "preset_names",
    "preset_streams",
    "resolve_data_root",
    "split_clients_with_heldout",
    "stream_preset",
    "stream_synthetic",
]
