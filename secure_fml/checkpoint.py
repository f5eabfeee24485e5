"""Atomic, integrity-checked checkpoints (write temp, fsync, rename, fsync dir).

A checkpoint holds the packed global state (theta and, for Meta-SGD,
log_alpha), the server optimizer state, the round number, the model spec
needed to rebuild the network, and the resolved config. It is loaded with
``torch.load(weights_only=True)``: never an arbitrary unpickler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from privacy import atomic_write_bytes
from privacy.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "load_checkpoint",
    "resume_round",
    "save_checkpoint",
    "training_checkpoint",
]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    round: int
    state: torch.Tensor
    optimizer: dict[str, Any]
    model_spec: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any]


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    payload = {
        "format": FORMAT_VERSION,
        "round": ckpt.round,
        "state": ckpt.state.detach().cpu().float().contiguous(),
        "optimizer": ckpt.optimizer,
        "meta": json.dumps(
            {"model_spec": ckpt.model_spec, "config": ckpt.config, "extra": ckpt.extra},
            sort_keys=True,
        ),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    # A SHA-256 trailer detects truncation and bit rot before torch parses anything.
    atomic_write_bytes(path, body + hashlib.sha256(body).digest())


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    if len(raw) < 33:
        raise CheckpointError(f"checkpoint {path} is truncated")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(
            f"checkpoint {path} failed its integrity check (truncated or altered)"
        )
    try:
        payload = torch.load(io.BytesIO(body), weights_only=True, map_location="cpu")
        if payload.get("format") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format {payload.get('format')!r}, expected {FORMAT_VERSION}"
            )
        meta = json.loads(payload["meta"])
        return Checkpoint(
            round=int(payload["round"]),
            state=payload["state"],
            optimizer=payload["optimizer"],
            model_spec=meta["model_spec"],
            config=meta["config"],
            extra=meta["extra"],
        )
    except CheckpointError:
        raise
    except Exception as e:  # any parse problem is reported as one typed error
        raise CheckpointError(f"checkpoint {path} is unreadable: {e}") from None


def training_checkpoint(
    *,
    round: int,
    state: torch.Tensor,
    optimizer: Any,
    model_spec: dict[str, Any],
    config: dict[str, Any],
    algorithm: str,
    ledger_head: Any | None = None,
    data_spec: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """The checkpoint of a training run (written by the round engine, for simulation
    and deployment alike). ``ledger_head`` is the privacy ledger's
    :class:`privacy.LedgerHead` (or None). Client sampling keeps no state: it draws
    from the CSPRNG (or, in insecure test mode, from (seed, round)), so a resumed run
    never replays a draw. ``data_spec`` is :func:`secure_fml.data.preprocessing_spec`
    of the training data (feature names, imputation, standardization, labels):
    ``secure-fml adapt`` and :func:`secure_fml.personalize` apply it to a new site's data.
    """
    return Checkpoint(
        round=round,
        state=state,
        optimizer=optimizer.state_dict(),
        model_spec=model_spec,
        config=config,
        extra={
            "algorithm": algorithm,
            "ledger_head": dataclasses.asdict(ledger_head) if ledger_head is not None else None,
            **({"data": data_spec} if data_spec is not None else {}),
            **(extra or {}),
        },
    )


def resume_round(checkpoint_round: int, ledger_last_round: int | None) -> int:
    """The round to continue after, given the checkpoint and the privacy ledger.

    Rounds charged to the ledger after the last checkpoint (a crash between
    ``ledger.record`` and the next checkpoint) stay spent: training continues
    after the last charged round instead of charging it twice.
    """
    if ledger_last_round is not None and ledger_last_round > checkpoint_round:
        log.warning(
            "rounds %d..%d were charged to the privacy ledger after the last checkpoint; "
            "continuing at round %d",
            checkpoint_round + 1,
            ledger_last_round,
            ledger_last_round + 1,
        )
        return ledger_last_round
    return checkpoint_round
