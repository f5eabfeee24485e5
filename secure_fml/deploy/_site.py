"""A deployed site: the engine's client pipeline, with peers verified by certificate.

Everything a site does in a round -- model and roster checks, local update,
clipping, encoding, its noise share, the aggregation client session -- is
:class:`~secure_fml.pipeline.ClientPipeline`, the code every simulated client
runs. What is specific to a deployment is only who the peers are: each roster
entry carries a DER certificate that must chain to the consortium CA and name
that participant, and it carries the CA-attested SecAgg identity key.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy import Csprng
from secure_fml._functional import Batch
from secure_fml.algorithms import Algorithm
from secure_fml.deploy._pki import verify_site_certificate
from secure_fml.messages import Peer
from secure_fml.pipeline import ClientPipeline, seeded_generator

__all__ = ["Site"]

log = logging.getLogger(__name__)


class Site(ClientPipeline):
    """One site's side of the rounds it is sampled for.

    ``seed`` picks only mini-batches and the support/query split (reproducible
    experiments); without it every release draws fresh randomness, so a replayed
    round start never reproduces an earlier update. Masks, keys and noise always come
    from the CSPRNG (or, with the config's insecure test seed, from that seed).
    """

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
        randomness: Callable[[int], Csprng] | None = None,
    ) -> None:
        self.ca = ca_certificate
        generator = seeded_generator(seed, name) if seed is not None else None
        super().__init__(
            name=name,
            algorithm=algorithm,
            data=data,
            identity_key=identity_key,
            verify_peer=self._verify_peer_certificate,
            training_generator=generator,
            randomness=randomness,
            require_noise=require_noise,
        )
        self.seed = seed if seed is not None else secrets.randbits(63)

    def _verify_peer_certificate(self, peer: Peer) -> Ed25519PublicKey:
        return verify_site_certificate(
            peer.identity, ca_cert=self.ca, expected_name=peer.name
        ).public_key
