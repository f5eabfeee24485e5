"""Personalize a trained model for one new site: the public API behind ``secure-fml adapt``.

    import secure_fml
    site = secure_fml.personalize("runs/demo/metasgd", my_client_data, steps=5)
    site.predict(x_new)                       # labels; site.module is a plain nn.Module

The checkpoint carries what the site must reproduce (see
:func:`secure_fml.data.preprocessing_spec`): its feature names, imputation and
standardization. :func:`load_site_csv` reads a site's CSV **by column name**
against those names, refuses extra or missing columns by name (extra ones may
be dropped with ``ignore_columns``) and applies the stored preprocessing with
the site's own statistics.

A model trained with a custom ``nn.Module`` is stored with a ``custom`` spec
(class and parameter layout, never code): pass the module (``module=Net()``)
and its layout is checked; nothing is ever imported from a checkpoint.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privacy.errors import ConfigError, DataError
from secure_fml._functional import FunctionalModel
from secure_fml.algorithms import Algorithm, make_algorithm
from secure_fml.checkpoint import Checkpoint, load_checkpoint
from secure_fml.config import Config, config_from_dict
from secure_fml.data import (
    ClientData,
    FederatedDataset,
    Impute,
    InputKind,
    PixelTransform,
    align_preprocessing,
    load_csv,
)
from secure_fml.evaluation import to_batch
from secure_fml.models import check_output_size, default_model, parameter_layout

__all__ = [
    "LoadedModel",
    "Personalized",
    "load_for_adaptation",
    "load_site_csv",
    "personalize",
]


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint made ready for adaptation."""

    checkpoint: Checkpoint
    config: Config
    module: nn.Module
    algorithm: Algorithm
    state: torch.Tensor  # the packed global state (theta, and log alpha for Meta-SGD)
    data_spec: dict[str, Any] | None  # preprocessing_spec of the training data, if stored
    where: str

    @property
    def num_outputs(self) -> int:
        return int(self.checkpoint.model_spec["num_classes"])

    @property
    def input_kind(self) -> InputKind:
        kind = (self.data_spec or {}).get("input_kind") or self.checkpoint.model_spec.get(
            "input_kind", "tabular"
        )
        return InputKind(kind)

    @property
    def pixel_transform(self) -> PixelTransform:
        """The transform the training images went through (``none`` for older checkpoints)."""
        return PixelTransform.parse((self.data_spec or {}).get("pixel_transform", "none"))


def _checkpoint_path(path: str | Path) -> Path:
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def load_for_adaptation(
    checkpoint: str | Path | Checkpoint, *, module: nn.Module | None = None
) -> LoadedModel:
    """Load ``checkpoint`` (a file, a run directory or a :class:`Checkpoint`) and rebuild
    its model; ``module`` is required for (and checked against) a custom model."""
    if isinstance(checkpoint, Checkpoint):
        ckpt, where = checkpoint, "checkpoint"
    else:
        path = _checkpoint_path(checkpoint)
        ckpt, where = load_checkpoint(path), str(path)
    config = config_from_dict(ckpt.config)
    spec = ckpt.model_spec
    if module is None:
        if spec.get("kind") == "custom":
            short = str(spec.get("class", "Net")).rsplit(".", 1)[-1]
            raise ConfigError(
                f"{where} was trained with a custom model ({spec.get('class')}), which a "
                f"checkpoint cannot rebuild: use secure_fml.personalize(checkpoint, data, "
                f"module={short}(...)) in Python"
            )
        module = default_model(
            str(spec["kind"]),
            sample_shape=tuple(spec["sample_shape"]),
            num_classes=int(spec["num_classes"]),
            hidden=None if spec.get("hidden") is None else tuple(spec["hidden"]),
        )
    elif spec.get("kind") == "custom" and parameter_layout(module) != spec.get("parameters"):
        raise ConfigError(
            f"module= has parameter layout {parameter_layout(module)[:3]}..., the model in "
            f"{where} has {spec.get('parameters', [])[:3]}...: not the trained architecture"
        )
    fm = FunctionalModel(module)
    algorithm = make_algorithm(config.algorithm, fm)
    expected = int(algorithm.initial_state(fm.initial_parameters()).numel())
    if ckpt.state.numel() != expected:
        raise ConfigError(
            f"{where} holds {ckpt.state.numel()} parameters but the model "
            f"({spec.get('kind')}, hidden {spec.get('hidden')}) needs {expected}: it was "
            "probably trained with a custom module; pass it: "
            "secure_fml.personalize(checkpoint, data, module=...)"
        )
    data_spec = ckpt.extra.get("data")
    return LoadedModel(
        checkpoint=ckpt,
        config=config,
        module=module,
        algorithm=algorithm,
        state=ckpt.state.to(torch.float32),
        data_spec=data_spec if isinstance(data_spec, dict) else None,
        where=where,
    )


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), None)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read CSV ({e})") from None
    if not header:
        raise DataError(f"{path}: empty file (no header line)")
    return [h.strip() for h in header]


def load_site_csv(
    path: str | Path,
    *,
    data_spec: dict[str, Any] | None,
    client_column: str,
    label_column: str,
    ignore_columns: Sequence[str] = (),
    impute: str | None = None,
    standardize: bool | None = None,
) -> tuple[FederatedDataset, list[str]]:
    """A site's CSV, columns matched **by name** to the model's features.

    Returns the dataset and notices (e.g. a preprocessing override). With the
    checkpoint's ``data_spec`` the feature columns are its ``feature_names`` in
    model order; any other column (besides the client and label columns and
    ``ignore_columns``) is refused by name, as is a missing one. ``impute`` and
    ``standardize`` default to the stored ones. Without a ``data_spec`` (an
    older checkpoint) every remaining column is a feature, in file order.
    """
    p = Path(path)
    header = _csv_header(p)
    notices: list[str] = []
    unknown_ignored = [c for c in ignore_columns if c not in header]
    if unknown_ignored:
        raise ConfigError(
            f"--ignore-columns {', '.join(unknown_ignored)}: no such column in {p} "
            f"(columns: {', '.join(header)})"
        )
    for col, flag in ((client_column, "--client-column"), (label_column, "--label-column")):
        if col not in header:
            raise DataError(f"{p}: {flag} {col!r} is not a column (columns: {', '.join(header)})")
    rest = [h for h in header if h not in (client_column, label_column, *ignore_columns)]
    names = (data_spec or {}).get("feature_names")
    if names:
        missing = [n for n in names if n not in rest]
        extra = [h for h in rest if h not in names]
        if missing:
            raise DataError(
                f"{p}: missing feature column(s) {', '.join(missing)} that the model was "
                f"trained on (expects {', '.join(names)})"
            )
        if extra:
            raise DataError(
                f"{p}: column(s) {', '.join(extra)} are not features of the model; drop them "
                f"with --ignore-columns {','.join(extra)}"
            )
        features = list(names)
    else:
        features = rest
        notices.append(
            "the checkpoint stores no feature names: columns are used in file order "
            f"({', '.join(rest)})"
        )
    stored_impute = (data_spec or {}).get("impute", "none")
    stored_std = bool((data_spec or {}).get("standardize", False))
    use_impute = Impute.parse(impute if impute is not None else stored_impute)
    use_std = stored_std if standardize is None else standardize
    if data_spec is not None and use_impute.value != stored_impute:
        notices.append(
            f"impute={use_impute.value} overrides the training data's impute={stored_impute}"
        )
    if data_spec is not None and use_std != stored_std:
        notices.append(
            f"standardize={use_std} overrides the training data's standardize={stored_std}"
        )
    ds = load_csv(
        p,
        client_column=client_column,
        label_column=label_column,
        feature_columns=features,
        impute=use_impute,
        standardize=use_std,
    )
    return ds, notices


@dataclass(frozen=True)
class Personalized:
    """The model adapted to one site."""

    module: nn.Module  # the architecture with the adapted weights loaded (eval mode)
    theta: torch.Tensor  # the adapted flat parameters
    steps: int
    num_samples: int
    client_id: str | None
    checkpoint_round: int
    input_kind: InputKind
    #: The training data's pixel transform: :meth:`predict` applies it to raw pixels.
    pixel_transform: PixelTransform = PixelTransform.NONE

    def _x(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self.pixel_transform is not PixelTransform.NONE:
            raw = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
            x = self.pixel_transform.apply(raw, where="predict")
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        return t.long() if self.input_kind is InputKind.SEQUENCE else t.float()

    @torch.no_grad()
    def predict_proba(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        out: np.ndarray = torch.softmax(self.module(self._x(x)), dim=1).numpy()
        return out

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        out: np.ndarray = self.predict_proba(x).argmax(axis=1)
        return out


def _as_client(data: Any, client: str | None, transform: PixelTransform) -> ClientData:
    if isinstance(data, ClientData | tuple) and transform is not PixelTransform.NONE:
        # Raw site data (the training data's stored encoding): the model's transform.
        c = _as_client(data, client, PixelTransform.NONE)
        return ClientData(c.client_id, transform.apply(c.x, where=f"site {c.client_id!r}"), c.y)
    if isinstance(data, ClientData):
        return data
    if isinstance(data, FederatedDataset):
        data, _ = align_preprocessing(data, {"pixel_transform": transform.value})
        if client is None:
            if len(data.clients) != 1:
                raise ConfigError(
                    f"the data holds {len(data.clients)} sites: pass client=... (e.g. "
                    f"{data.clients[0].client_id!r})"
                )
            return data.clients[0]
        return data.client(client)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (np.asarray(a) for a in data)
        return ClientData(client or "site", x, y.astype(np.int64))
    raise ConfigError(
        "data must be a ClientData, a FederatedDataset (with client=) or an (x, y) pair"
    )


def personalize(
    checkpoint: str | Path | Checkpoint,
    data: ClientData | FederatedDataset | tuple[np.ndarray, np.ndarray],
    *,
    steps: int | None = None,
    client: str | None = None,
    module: nn.Module | None = None,
) -> Personalized:
    """Adapt the checkpoint's model on all of ``data`` (the site's labelled examples).

    ``steps`` defaults to the run's adaptation steps; the step size is the run's
    (Meta-SGD: its learned per-parameter rates). The labels must fit the
    model's outputs and the samples its input shape.

    Images go through the checkpoint's recorded pixel transform (e.g. FEMNIST's
    ``invert``): a ``ClientData`` or ``(x, y)`` pair holds the site's raw pixels, a
    ``FederatedDataset`` says by its metadata whether it is raw or already
    transformed; :meth:`Personalized.predict` takes raw pixels too.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps must be an integer >= 1, got {steps!r}")
    loaded = load_for_adaptation(checkpoint, module=module)
    site = _as_client(data, client, loaded.pixel_transform)
    spec = loaded.checkpoint.model_spec
    if list(site.x.shape[1:]) != list(spec["sample_shape"]):
        raise DataError(
            f"site {site.client_id!r} has samples of shape {list(site.x.shape[1:])}; the "
            f"model expects {list(spec['sample_shape'])}"
        )
    if int(site.y.min()) < 0:
        raise DataError(f"site {site.client_id!r} has a negative label {int(site.y.min())}")
    if int(site.y.max()) >= loaded.num_outputs:
        raise DataError(
            f"site {site.client_id!r} has label {int(site.y.max())} but the model has "
            f"{loaded.num_outputs} outputs (labels 0..{loaded.num_outputs - 1})"
        )
    batch = to_batch(site, loaded.input_kind)
    check_output_size(loaded.module, batch.x[:1], loaded.num_outputs)
    cfg = loaded.config.algorithm
    k = steps if steps is not None else (cfg.adapt_steps or cfg.inner_steps)
    theta = loaded.algorithm.adapt(loaded.state, batch, steps=k).detach()
    mod = copy.deepcopy(loaded.module)
    torch.nn.utils.vector_to_parameters(theta.clone(), mod.parameters())
    mod.eval()
    return Personalized(
        module=mod,
        theta=theta,
        steps=k,
        num_samples=len(site),
        client_id=site.client_id,
        checkpoint_round=loaded.checkpoint.round,
        input_kind=loaded.input_kind,
        pixel_transform=loaded.pixel_transform,
    )
