"""Per-example gradients and the clipped per-unit sum, with ``torch.func``.

``vmap(grad(loss of one example))`` over ``functional_call`` gives every
example's gradient at an arbitrary flat parameter vector, for any module whose
forward has batching rules. We chose it over Opacus' ``GradSampleModule`` by
measurement (``benchmarks/results/dp_step_cost.md``): on the FEMNIST CNN it is
about twice as fast as Opacus' hooks, needs no module surgery for Conv2d,
Linear and Embedding, and evaluates at the flat parameters the algorithms pass
around instead of at a module's own ``.weight``.

``nn.LSTM`` is the exception: its fused kernel has no batching rule (vmap
falls back to a slow per-example loop), so for per-example gradients each LSTM
is replaced by :class:`_UnrolledLSTM`, the same recurrence written with matmuls
and the **same parameter names**, which the tests check against per-example
``autograd.grad`` calls on the original ``nn.LSTM``. Differentiating its weights
inside vmap would accumulate one per-example weight gradient per time step (the
cost Opacus' ``DPLSTM`` also pays); instead the LSTM weights are held constant,
vmap differentiates with respect to a zero perturbation of every gate
pre-activation, and each example's weight gradient is formed once from those
gate gradients and the layer's inputs and previous hidden states
(``dW_ih = Σ_t dG_t x_tᵀ``, ``dW_hh = Σ_t dG_t h_{t-1}ᵀ``, ``db = Σ_t dG_t``).

Models whose only parameters are ``nn.Linear`` layers (the tabular MLP,
logistic regression) take a cheaper path, again by measurement: vmap's per-call
overhead dominates such small models, so there one ordinary batched forward
records every Linear layer's input ``a`` and the gradient ``δ`` of the summed
loss w.r.t. its output, and each example's gradient is ``δ_i a_iᵀ`` (and ``δ_i``
for the bias): the activation-times-backprop rule Opacus' hooks use, valid
because each Linear layer is applied once and no example influences another's
loss.

Layers that mix examples (batch normalization) have no per-example gradient and
are refused.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from privacy.errors import ConfigError
from secure_fml._functional import Batch, FunctionalModel

__all__ = ["ClippedSum", "PerExampleGradients"]

# Added to a norm before dividing by it, as Opacus does: keeps the factor finite
# and makes every clipped norm strictly smaller than the bound.
_NORM_EPS = 1e-6


class _Probe:
    """Per-call state of an unrolled LSTM during per-example differentiation.

    ``eps[layer]`` (``(steps, 4H)``) is added to the gate pre-activations; the layer's
    inputs and previous hidden states are recorded in ``aux``. ``shapes`` mode only
    records the sequence lengths (a dry run before the real call).
    """

    def __init__(self) -> None:
        self.eps: dict[int, torch.Tensor] | None = None
        self.aux: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.steps: dict[int, int] = {}


class _UnrolledLSTM(nn.Module):
    """``nn.LSTM`` (unidirectional, no projection, no dropout) as explicit matmuls.

    Registers the same parameters under the same names as the module it
    replaces, so one parameter dict drives either; PyTorch's gate order
    (input, forget, cell, output) is kept.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if lstm.bidirectional or lstm.proj_size or lstm.dropout:
            raise ConfigError(
                "per-example gradients support nn.LSTM without bidirectional, proj_size or dropout"
            )
        self.hidden_size = lstm.hidden_size
        self.num_layers = lstm.num_layers
        self.bias = lstm.bias
        self.batch_first = lstm.batch_first
        for name, p in lstm.named_parameters():
            self.register_parameter(name, nn.Parameter(p.detach().clone()))
        self.probe: _Probe | None = None

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        inp = x if self.batch_first else x.transpose(0, 1)
        n, steps = inp.shape[0], inp.shape[1]
        hs, cs = [], []
        for layer in range(self.num_layers):
            w_ih = getattr(self, f"weight_ih_l{layer}")
            w_hh = getattr(self, f"weight_hh_l{layer}")
            xw = inp @ w_ih.T
            if self.bias:
                xw = xw + getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")
            if hx is None:
                h = inp.new_zeros(n, self.hidden_size)
                c = inp.new_zeros(n, self.hidden_size)
            else:
                h, c = hx[0][layer], hx[1][layer]
            probe = self.probe
            if probe is not None:
                probe.steps[layer] = steps
                if probe.eps is not None:
                    xw = xw + probe.eps[layer]
            outs = []
            prev = []
            for t in range(steps):
                prev.append(h)
                gates = xw[:, t] + h @ w_hh.T
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            if probe is not None and probe.eps is not None:
                probe.aux[layer] = (inp, torch.stack(prev, dim=1))
            inp = torch.stack(outs, dim=1)
            hs.append(h)
            cs.append(c)
        out = inp if self.batch_first else inp.transpose(0, 1)
        return out, (torch.stack(hs), torch.stack(cs))


def _vmap_friendly(module: nn.Module) -> tuple[nn.Module, dict[str, _UnrolledLSTM]]:
    """A copy of ``module`` whose forward vmaps well (LSTMs unrolled), same parameter names."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"layer {name or type(sub).__name__!r} ({type(sub).__name__}) mixes examples "
                "in a batch: it has no per-example gradient (use GroupNorm or LayerNorm)"
            )
        if isinstance(sub, nn.RNNBase) and not isinstance(sub, nn.LSTM):
            raise ConfigError(
                f"layer {name!r} ({type(sub).__name__}) is not supported for per-example "
                "gradients (nn.LSTM is)"
            )
    out = copy.deepcopy(module)

    def replace(parent: nn.Module) -> None:
        for child_name, child in parent.named_children():
            if isinstance(child, nn.LSTM):
                setattr(parent, child_name, _UnrolledLSTM(child))
            else:
                replace(child)

    if isinstance(out, nn.LSTM):
        out = _UnrolledLSTM(out)
    else:
        replace(out)
    lstms = {name: m for name, m in out.named_modules() if isinstance(m, _UnrolledLSTM)}
    return out, lstms


def _slice(batch: Batch, start: int, stop: int) -> Batch:
    if start == 0 and stop >= len(batch):
        return batch
    unit = None if batch.unit is None else batch.unit[start:stop]
    return Batch(batch.x[start:stop], batch.y[start:stop], unit)


def _linear_only(module: nn.Module) -> dict[str, nn.Linear] | None:
    """The Linear layers of ``module`` if they hold every parameter it has, else None."""
    linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    owned = {f"{n}.{p}" if n else p for n, m in linears.items() for p, _ in m.named_parameters()}
    names = {n for n, _ in module.named_parameters()}
    if not linears or owned != names:
        return None
    return linears


@dataclass(frozen=True)
class ClippedSum:
    """Sum over units of each unit's gradient clipped to L2 norm ``clip_norm``.

    ``total`` is flat (the model's parameter order); ``units`` is the number of
    units summed and ``clipped`` how many of them were scaled down.
    """

    total: torch.Tensor
    units: int
    clipped: int


class PerExampleGradients:
    """Per-example gradients of a :class:`FunctionalModel`'s loss, in chunks.

    ``chunk_size`` bounds how many examples' gradients exist at once (memory:
    ``chunk_size`` x the parameter count); a unit's records always stay in one
    chunk, so a person is clipped once, whatever the chunking.
    """

    def __init__(self, model: FunctionalModel, *, chunk_size: int = 32) -> None:
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        self.model = model
        self.chunk_size = chunk_size
        self._module, self._lstms = _vmap_friendly(model.module)
        # Parameters differentiated inside vmap (all but the unrolled LSTMs' weights).
        lstm_params = {
            f"{prefix}.{n}" if prefix else n: (prefix, n)
            for prefix, m in self._lstms.items()
            for n, _ in m.named_parameters()
        }
        self._lstm_params = lstm_params
        buffers = dict(model.buffers)
        module = self._module
        lstms = self._lstms

        def loss_one(
            diff: dict[str, torch.Tensor],
            eps: dict[str, dict[int, torch.Tensor]],
            const: dict[str, torch.Tensor],
            x: torch.Tensor,
            y: torch.Tensor,
        ) -> tuple[torch.Tensor, dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]]]:
            for prefix, m in lstms.items():
                m.probe = _Probe()
                m.probe.eps = {k: v.unsqueeze(0) for k, v in eps[prefix].items()}
            try:
                out = functional_call(module, {**diff, **const, **buffers}, (x.unsqueeze(0),))
                aux = {prefix: m.probe.aux for prefix, m in lstms.items() if m.probe}
            finally:
                for m in lstms.values():
                    m.probe = None
            return nn.functional.cross_entropy(out, y.unsqueeze(0)), aux

        self._per_example = vmap(
            grad(loss_one, argnums=(0, 1), has_aux=True), in_dims=(None, 0, None, 0, 0)
        )
        self._linear = _linear_only(self._module)
        self._has_bias = {n: m.bias is not None for n, m in (self._linear or {}).items()}
        self._seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if self._linear is not None:
            for lname, lin in self._linear.items():
                lin.register_forward_hook(self._recorder(lname))

    def _recorder(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name in self._seen:
                raise ConfigError(f"linear layer {name!r} is applied twice in one forward")
            self._seen[name] = (inputs[0], output)

        return hook

    def _capture_linear(
        self, params: dict[str, torch.Tensor], batch: Batch
    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """Per Linear layer: (name, input ``a`` and output gradient ``δ``, both ``(n, t, ·)``)
        of the summed loss, from one ordinary batched forward and backward."""
        linears = self._linear
        if linears is None:  # pragma: no cover - only called for linear models
            raise ConfigError("not an all-Linear model")
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self._seen = {}
        try:
            with torch.enable_grad():
                logits = functional_call(self._module, {**leaves, **self.model.buffers}, (batch.x,))
                loss = nn.functional.cross_entropy(logits, batch.y, reduction="sum")
                names = list(linears)
                outs = [self._seen[n][1] for n in names]
                deltas = torch.autograd.grad(loss, outs)
        finally:
            seen, self._seen = self._seen, {}
        out = []
        for lname, delta in zip(names, deltas, strict=True):
            a = seen[lname][0].detach()
            n = delta.shape[0]
            out.append(
                (lname, a.reshape(n, -1, a.shape[-1]), delta.reshape(n, -1, delta.shape[-1]))
            )
        return out

    def _per_example_linear(
        self, params: dict[str, torch.Tensor], batch: Batch
    ) -> dict[str, torch.Tensor]:
        """Activation x backprop per-example gradients of an all-Linear model."""
        out: dict[str, torch.Tensor] = {}
        for lname, a3, d3 in self._capture_linear(params, batch):
            pre = f"{lname}." if lname else ""
            out[f"{pre}weight"] = torch.einsum("bto,bti->boi", d3, a3)
            if self._has_bias[lname]:
                out[f"{pre}bias"] = d3.sum(dim=1)
        return out

    def _clipped_sum_linear(
        self, flat: torch.Tensor, batch: Batch, clip_norm: float
    ) -> ClippedSum | None:
        """Σ_i clip(g_i) for an all-Linear model on non-sequence inputs, never
        materializing per-example gradients: ``‖δ_i a_iᵀ‖ = ‖δ_i‖‖a_i‖``, and the clipped
        sum of a layer is ``(f ⊙ δ)ᵀ a`` for the clip factors ``f``. None: not applicable."""
        captured = self._capture_linear(self._params(flat), batch)
        if any(a3.shape[1] != 1 for _, a3, _ in captured):
            return None  # per-token inputs: the norm needs the full gradient
        sq = torch.zeros(len(batch), dtype=flat.dtype)
        for lname, a3, d3 in captured:
            dd = d3[:, 0].pow(2).sum(dim=1)
            sq = sq + dd * (a3[:, 0].pow(2).sum(dim=1) + (1.0 if self._has_bias[lname] else 0.0))
        norms = sq.sqrt()
        # The clipping: every record's gradient is scaled to norm <= clip_norm.
        factor = (clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        parts: dict[str, torch.Tensor] = {}
        for lname, a3, d3 in captured:
            pre = f"{lname}." if lname else ""
            fd = d3[:, 0] * factor.unsqueeze(1)
            parts[f"{pre}weight"] = fd.T @ a3[:, 0]
            if self._has_bias[lname]:
                parts[f"{pre}bias"] = fd.sum(dim=0)
        total = torch.cat([parts[name].reshape(-1) for name in self.model.names])
        return ClippedSum(total, len(batch), int((norms > clip_norm).sum()))

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.model.names, self.model.split(flat.detach()), strict=True))

    def _lstm_steps(
        self, params: dict[str, torch.Tensor], x: torch.Tensor
    ) -> dict[str, dict[int, int]]:
        """Sequence length seen by every unrolled LSTM layer (a dry run on one example)."""
        for m in self._lstms.values():
            m.probe = _Probe()
        try:
            with torch.no_grad():
                functional_call(self._module, {**params, **self.model.buffers}, (x[:1],))
            return {p: dict(m.probe.steps) for p, m in self._lstms.items() if m.probe}
        finally:
            for m in self._lstms.values():
                m.probe = None

    def per_example(self, flat: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
        """Every example's gradient, one ``(n, *shape)`` tensor per parameter."""
        params = self._params(flat)
        if self._linear is not None:
            lin = self._per_example_linear(params, batch)
            return [lin[name] for name in self.model.names]
        n = len(batch)
        diff = {k: v for k, v in params.items() if k not in self._lstm_params}
        const = {k: v for k, v in params.items() if k in self._lstm_params}
        eps: dict[str, dict[int, torch.Tensor]] = {}
        if self._lstms:
            steps = self._lstm_steps(params, batch.x)
            for prefix, m in self._lstms.items():
                eps[prefix] = {
                    layer: flat.new_zeros(n, t, 4 * m.hidden_size)
                    for layer, t in steps[prefix].items()
                }
        with torch.enable_grad():
            (g_diff, g_eps), aux = self._per_example(diff, eps, const, batch.x, batch.y)
        out = dict(g_diff)
        for prefix, m in self._lstms.items():
            pre = f"{prefix}." if prefix else ""
            for layer, dg in g_eps[prefix].items():
                inp, hprev = aux[prefix][layer]
                inp, hprev = inp.squeeze(1), hprev.squeeze(1)
                out[f"{pre}weight_ih_l{layer}"] = torch.einsum("btg,bte->bge", dg, inp)
                out[f"{pre}weight_hh_l{layer}"] = torch.einsum("btg,bth->bgh", dg, hprev)
                if m.bias:
                    db = dg.sum(dim=1)
                    out[f"{pre}bias_ih_l{layer}"] = db
                    out[f"{pre}bias_hh_l{layer}"] = db.clone()
        return [out[name] for name in self.model.names]

    def _chunks(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Record indices grouped by unit, cut into chunks of whole units."""
        order = torch.argsort(codes, stable=True)
        sorted_codes = codes[order]
        bounds = torch.nonzero(sorted_codes[1:] != sorted_codes[:-1]).flatten() + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(codes)]
        chunks: list[torch.Tensor] = []
        lo = None
        for s, e in zip(starts, ends, strict=True):
            if lo is None:
                lo = s
            if e - lo >= self.chunk_size:
                chunks.append(order[lo:e])
                lo = None
        if lo is not None:
            chunks.append(order[lo:])
        return chunks

    def clipped_sum(
        self,
        flat: torch.Tensor,
        batch: Batch,
        *,
        clip_norm: float,
        unit_codes: torch.Tensor | None = None,
    ) -> ClippedSum:
        """Σ_u clip(g_u, C) over the units of ``batch``.

        ``g_u`` is the mean gradient of unit ``u``'s records (``unit_codes``, one
        int per record; ``None``: each record is a unit). Removing one unit's
        records from ``batch`` changes the result by at most ``clip_norm``.
        """
        if not clip_norm > 0:
            raise ConfigError(f"clip_norm must be > 0, got {clip_norm}")
        total = torch.zeros(self.model.dim, dtype=flat.dtype)
        n = len(batch)
        if n == 0:
            return ClippedSum(total, 0, 0)
        codes = unit_codes if unit_codes is not None else torch.arange(n)
        if codes.shape != (n,):
            raise ConfigError("unit_codes must hold one code per record")
        if unit_codes is None and self._linear is not None and n <= self.chunk_size:
            fast = self._clipped_sum_linear(flat, batch, clip_norm)
            if fast is not None:
                return fast
        units = clipped = 0
        if unit_codes is None:
            # One record per unit: contiguous slices, no index copies.
            parts = [
                (
                    torch.arange(s, min(s + self.chunk_size, n)),
                    _slice(batch, s, s + self.chunk_size),
                )
                for s in range(0, n, self.chunk_size)
            ]
        else:
            parts = [(idx, batch.take(idx)) for idx in self._chunks(codes)]
        for idx, part in parts:
            grads = [g.reshape(len(idx), -1) for g in self.per_example(flat, part)]
            if unit_codes is not None:
                _, local = torch.unique(codes[idx], return_inverse=True)
                k = int(local.max()) + 1
                counts = torch.bincount(local, minlength=k).to(grads[0].dtype).unsqueeze(1)
                grads = [
                    torch.zeros(k, g.shape[1], dtype=g.dtype).index_add_(0, local, g) / counts
                    for g in grads
                ]
            norms = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g, dim=1) for g in grads], dim=1), dim=1
            )
            # The clipping: every unit's gradient is scaled to norm <= clip_norm.
            factor = (clip_norm / (norms + _NORM_EPS)).clamp(max=1.0)
            units += len(norms)
            clipped += int((norms > clip_norm).sum())
            offset = 0
            for g in grads:
                width = g.shape[1]
                total[offset : offset + width] += factor @ g
                offset += width
        return ClippedSum(total, units, clipped)
