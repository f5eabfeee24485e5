"""Parameters as one flat tensor, evaluated with ``torch.func.functional_call``.

Every client contribution is one flat float32 vector, so the model's parameters
are handled as a flat vector too: :class:`FunctionalModel` splits a flat tensor
into per-parameter views (``torch.split``, whose backward is a single ``cat``)
and calls the module functionally. Gradients with respect to the flat tensor
are therefore flat already, with no per-round flatten/unflatten copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

__all__ = ["Batch", "FunctionalModel"]


@dataclass(frozen=True)
class Batch:
    """Samples ``x``, labels ``y`` and, optionally, each sample's privacy unit.

    ``unit`` (int64 codes, one per sample) groups the records of one person
    for record-level DP; ``None`` means every record is its own unit.
    """

    x: torch.Tensor
    y: torch.Tensor
    unit: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> Batch:
        """This batch on ``device`` (itself when it is there already)."""
        if self.x.device == device and self.y.device == device:
            return self
        unit = None if self.unit is None else self.unit.to(device)
        return Batch(self.x.to(device), self.y.to(device), unit)

    def take(self, idx: torch.Tensor | np.ndarray) -> Batch:
        if isinstance(idx, torch.Tensor) and idx.device != self.x.device:
            # CPU-drawn indices of a batch on an accelerator
            idx = idx.to(self.x.device)
        return Batch(self.x[idx], self.y[idx], None if self.unit is None else self.unit[idx])


class FunctionalModel:
    """A module evaluated at an arbitrary flat parameter vector."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [p.numel() for _, p in module.named_parameters()]
        self.buffers = dict(module.named_buffers())
        self.dim = int(sum(self.numels))
        self._device_buffers: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _buffers_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The module's buffers on ``device`` (copied once per device)."""
        if not self.buffers or all(b.device == device for b in self.buffers.values()):
            return self.buffers
        out = self._device_buffers.get(device)
        if out is None:
            out = self._device_buffers[device] = {k: b.to(device) for k, b in self.buffers.items()}
        return out

    def initial_parameters(self) -> torch.Tensor:
        """The module's own initialization as a flat float32 vector (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).float()

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of a flat vector, in ``named_parameters`` order."""
        parts = torch.split(flat, self.numels)
        return [t.view(s) for t, s in zip(parts, self.shapes, strict=True)]

    def logits_params(self, params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits with parameters given as a per-parameter list (see :meth:`split`)."""
        full = dict(zip(self.names, params, strict=True))
        full.update(self._buffers_on(params[0].device) if params else self.buffers)
        out: torch.Tensor = functional_call(self.module, full, (x,))
        return out

    def loss_params(self, params: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        """Mean loss with parameters given as a per-parameter list."""
        return nn.functional.cross_entropy(self.logits_params(params, batch.x), batch.y)

    def logits(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.logits_params(self.split(flat), x)

    def loss(self, flat: torch.Tensor, batch: Batch) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits(flat, batch.x), batch.y)

    def grad(self, flat: torch.Tensor, batch: Batch, *, create_graph: bool = False) -> torch.Tensor:
        """Gradient of the mean loss at ``flat`` (a fresh leaf unless create_graph)."""
        p = flat if create_graph else flat.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(p, batch), p, create_graph=create_graph)
        return g

    @torch.no_grad()
    def correct(self, flat: torch.Tensor, batch: Batch, *, chunk: int = 1024) -> int:
        total = 0
        for i in range(0, len(batch), chunk):
            pred = self.logits(flat, batch.x[i : i + chunk]).argmax(dim=1)
            total += int((pred == batch.y[i : i + chunk]).sum())
        return total

    @torch.no_grad()
    def mean_loss(self, flat: torch.Tensor, batch: Batch, *, chunk: int = 1024) -> float:
        total = 0.0
        for i in range(0, len(batch), chunk):
            part = Batch(batch.x[i : i + chunk], batch.y[i : i + chunk])
            total += float(self.loss(flat, part)) * len(part)
        return total / max(1, len(batch))
