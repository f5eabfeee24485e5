"""A site as a plain state machine: coordinator message in, reply out.

On a :class:`~secure_fml.deploy._messages.RoundStart` the site checks the model
(finite float32, the dimension its algorithm expects, the announced SHA-256)
and every peer certificate against the consortium CA, runs its algorithm's
``client_update`` on its own data, clips the update
(:func:`privacy.clip_update`), encodes it to fixed point and opens a SecAgg
:class:`~aggregation.ClientSession` that adds the distributed discrete Gaussian
noise before masking. Nothing but that masked, noised vector (and the SecAgg
key material) ever leaves the site.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass

import numpy as np
import torch
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import privacy
from aggregation import (
    ClientSession,
    ConsistencyRequest,
    FixedPointCodec,
    KeyBroadcast,
    MaskedInput,
    Message,
    ShareRouting,
    Stage,
    UnmaskRequest,
)
from privacy.errors import ConfigError, InvalidMessage, StaleMessage
from secure_fml._functional import Batch
from secure_fml.algorithms import Algorithm
from secure_fml.deploy._messages import (
    Finished,
    RoundStart,
    ServerMessage,
    StageReply,
    StageRequest,
)
from secure_fml.deploy._pki import verify_site_certificate

__all__ = ["Site"]

log = logging.getLogger(__name__)

_REQUEST_TYPES: dict[Stage, type[Message]] = {
    Stage.SHARE_KEYS: KeyBroadcast,
    Stage.MASKED_INPUT: ShareRouting,
    Stage.CONSISTENCY_CHECK: ConsistencyRequest,
    Stage.UNMASKING: UnmaskRequest,
}


@dataclass
class _Session:
    round: int
    session_id: bytes
    client: ClientSession


class Site:
    """One site's side of the rounds it is sampled for."""

    def __init__(
        self,
        *,
        name: str,
        algorithm: Algorithm,
        data: Batch,
        identity_key: Ed25519PrivateKey,
        ca_certificate: x509.Certificate,
        require_noise: bool = True,
        seed: int | None = None,
    ) -> None:
        if not isinstance(require_noise, bool):
            raise TypeError("require_noise must be a bool")
        self.name = name
        self.algorithm = algorithm
        self.data = data
        self._identity = identity_key
        self.ca = ca_certificate
        self.require_noise = require_noise
        # Only mini-batch selection uses this seed; masks and noise always come from the CSPRNG.
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.dim = int(algorithm.initial_state(algorithm.model.initial_parameters()).numel())
        self._session: _Session | None = None
        self.finished = False
        self.rounds_done: list[int] = []

    def handle(self, message: ServerMessage) -> StageReply | None:
        if isinstance(message, RoundStart):
            return self._start(message)
        if isinstance(message, StageRequest):
            return self._stage(message)
        if isinstance(message, Finished):
            self.finished = True
        return None

    # ------------------------------------------------------------------ round start

    def _check_model(self, msg: RoundStart) -> torch.Tensor:
        m = msg.model
        if m.dtype != np.float32 or m.ndim != 1 or m.shape[0] != self.dim:
            raise InvalidMessage(
                f"model is {m.dtype}{list(m.shape)}; this site's algorithm needs "
                f"float32[{self.dim}]"
            )
        if not bool(np.isfinite(m).all()):
            raise InvalidMessage("model contains NaN or Inf")
        digest = hashlib.sha256(np.ascontiguousarray(m, dtype="<f4").tobytes()).digest()
        if not hmac.compare_digest(digest, msg.model_hash):
            raise InvalidMessage("model does not match its announced SHA-256 hash")
        return torch.from_numpy(m.copy())

    def _start(self, msg: RoundStart) -> StageReply:
        self._session = None  # a new round always replaces an unfinished one
        state = self._check_model(msg)
        if self.require_noise and not msg.noise_stddev_int > 0:
            raise InvalidMessage("coordinator asked for a round without DP noise; refused")
        keys = {}
        for p in msg.peers:
            keys[p.index] = verify_site_certificate(
                p.certificate, ca_cert=self.ca, expected_name=p.name
            ).public_key
        me = [p for p in msg.peers if p.index == msg.site_index]
        if len(me) != 1 or me[0].name != self.name:
            raise InvalidMessage("roster does not list this site at its index")
        gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.seed, msg.round]).generate_state(1)[0])
        )
        upd = self.algorithm.client_update(state, self.data, gen)
        vec = upd.vector.detach().cpu().numpy().astype(np.float64)
        clipped = privacy.clip_update(vec, clip_norm=msg.clip_norm).vector
        try:
            codec = FixedPointCodec.create(
                clip_norm=msg.clip_norm,
                num_clients=msg.secagg.num_clients,
                modulus_bits=msg.secagg.modulus_bits,
                dimension=self.dim,
                scale=msg.scale,
                noise_stddev_int=msg.noise_stddev_int,
                wrap_probability=msg.wrap_probability if msg.noise_stddev_int else 1e-9,
            )
        except ConfigError as e:
            raise InvalidMessage(f"unusable fixed-point parameters: {e}") from None
        client = ClientSession(
            msg.secagg,
            client_id=msg.site_index,
            identity_key=self._identity,
            identity_keys=keys,
            session_id=msg.session_id,
            round_index=msg.round,
            model_hash=msg.model_hash,
            noise_stddev_int=msg.noise_stddev_int,
        )
        client.set_input(codec.encode(clipped))
        ad = client.advertise_keys()
        self._session = _Session(msg.round, msg.session_id, client)
        log.info("site %s round %d: update computed, keys advertised", self.name, msg.round)
        return StageReply(
            round=msg.round,
            session_id=msg.session_id,
            stage=Stage.ADVERTISE_KEYS,
            payload=ad.to_bytes(),
        )

    # ------------------------------------------------------------------ SecAgg stages

    def _stage(self, msg: StageRequest) -> StageReply:
        s = self._session
        if (
            s is None
            or s.round != msg.round
            or not hmac.compare_digest(s.session_id, msg.session_id)
        ):
            raise StaleMessage(f"stage request for round {msg.round} of an unknown session")
        cls = _REQUEST_TYPES.get(msg.stage)
        if cls is None:
            raise InvalidMessage(f"sites do not accept {msg.stage.name} requests")
        reply = s.client.handle(cls.from_bytes(msg.payload))
        if msg.stage is Stage.UNMASKING:
            self.rounds_done.append(msg.round)
            self._session = None
        log.info("site %s round %d: %s sent", self.name, msg.round, msg.stage.name.lower())
        tensor = (
            (f"uint{reply.bits}", int(reply.vector.shape[0]))
            if isinstance(reply, MaskedInput)
            else None
        )
        return StageReply(
            round=msg.round,
            session_id=msg.session_id,
            stage=msg.stage,
            payload=reply.to_bytes(),
            tensor=tensor,
        )
