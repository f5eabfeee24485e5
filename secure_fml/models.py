"""Models used by the presets. Any ``torch.nn.Module`` mapping a batch to logits works too.

- :class:`FemnistCNN`: exactly the FedMeta/LEAF FEMNIST CNN (SEEDS.md): conv 5x5 32ch ->
  2x2 maxpool -> conv 5x5 64ch -> 2x2 maxpool -> FC 2048 ReLU -> 62-way output.
- :class:`CharLSTM`: Shakespeare next-character model: 8-d embedding, 2-layer LSTM with
  256 units over 80 characters, output over the vocabulary.
- :class:`MLP`: tabular data (hidden=() gives multinomial logistic regression).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from privacy.errors import ConfigError

__all__ = [
    "MLP",
    "CharLSTM",
    "FemnistCNN",
    "check_output_size",
    "default_hidden",
    "default_model",
    "describe_module",
    "parameter_layout",
]


class FemnistCNN(nn.Module):
    def __init__(self, num_classes: int = 62) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(7 * 7 * 64, 2048)
        self.fc2 = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class CharLSTM(nn.Module):
    def __init__(self, vocab_size: int = 73, embed_dim: int = 8, hidden: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x.long()))
        return self.out(h[:, -1, :])


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def default_hidden(kind: str) -> tuple[int, ...]:
    """``model.hidden`` when unset: LEAF's LSTM width 256 for ``lstm``, one layer of 64
    for ``mlp`` (and, unused, for ``cnn`` and ``logreg``)."""
    return (256,) if kind == "lstm" else (64,)


def default_model(
    kind: str,
    *,
    sample_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] | None = None,
) -> nn.Module:
    """Build a model by name: ``cnn``, ``lstm``, ``mlp`` or ``logreg``.

    ``hidden``: the MLP's hidden widths, or the LSTM's one width (both layers); None:
    :func:`default_hidden`.
    """
    widths = tuple(default_hidden(kind) if hidden is None else hidden)
    if kind == "cnn":
        if tuple(sample_shape) != (28, 28):
            raise ConfigError(f"model 'cnn' needs 28x28 inputs, data has {tuple(sample_shape)}")
        return FemnistCNN(num_classes)
    if kind == "lstm":
        if len(widths) != 1:
            raise ConfigError(f"model 'lstm' takes one hidden width, got {list(widths)}")
        return CharLSTM(vocab_size=num_classes, hidden=widths[0])
    if kind in ("mlp", "logreg"):
        n_in = 1
        for s in sample_shape:
            n_in *= int(s)
        return MLP(n_in, num_classes, hidden=() if kind == "logreg" else widths)
    raise ConfigError(f"model.kind must be one of cnn, lstm, mlp, logreg; got {kind!r}")


def parameter_layout(module: nn.Module) -> list[list[Any]]:
    """``[[name, [shape...]], ...]`` in ``named_parameters`` order (the flat state's layout)."""
    return [[n, list(p.shape)] for n, p in module.named_parameters()]


def describe_module(module: nn.Module, *, default: Mapping[str, Any]) -> dict[str, Any]:
    """The model spec to store for ``module``: ``default`` when the module is exactly what
    :func:`default_model` builds from it, else a ``kind = "custom"`` spec.

    A custom spec records the class and the parameter layout, never code: a
    checkpoint is data, so nothing rebuilds a custom class from it; loading it
    needs the module itself (``secure_fml.personalize(..., module=Net())``), and
    its layout is checked against the stored one.
    """
    try:
        with torch.device("meta"):
            ref = default_model(
                str(default["kind"]),
                sample_shape=tuple(default["sample_shape"]),
                num_classes=int(default["num_classes"]),
                hidden=tuple(default["hidden"]),
            )
        same = type(ref) is type(module) and parameter_layout(ref) == parameter_layout(module)
    except ConfigError:
        same = False
    if same:
        return dict(default)
    cls = type(module)
    return {
        "kind": "custom",
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "parameters": parameter_layout(module),
        "sample_shape": list(default["sample_shape"]),
        "num_classes": int(default["num_classes"]),
        "input_kind": default.get("input_kind"),
    }


@torch.no_grad()
def check_output_size(
    module: nn.Module, sample: torch.Tensor, num_classes: int, *, exact: bool = True
) -> None:
    """Raise :class:`ConfigError` unless ``module`` maps ``sample`` (a batch) to
    ``(batch, num_classes)`` logits (``exact=False``: at least ``num_classes``)."""
    try:
        out = module(sample)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(
            f"the model cannot take the data's samples of shape {list(sample.shape[1:])}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != sample.shape[0]:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model must return (batch, classes) logits, got {shape}")
    k = int(out.shape[1])
    if k < num_classes or (exact and k != num_classes):
        raise ConfigError(
            f"the model has {k} outputs but the data has {num_classes} classes (labels 0.."
            f"{num_classes - 1}); give the model {num_classes} outputs"
        )
