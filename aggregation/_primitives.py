"""Hazmat layer of the secure-aggregation package. Private: use the sessions instead.

Everything here is a thin, typed wrapper over ``cryptography`` (X25519, HKDF-SHA256,
AES-CTR, AES-GCM, Ed25519) plus the pieces we write ourselves because no vetted
library offers them in the shape we need:

* Shamir t-of-n secret sharing of 16-byte secrets over the prime field
  GF(2^128 + 51) (the smallest prime above 2^128, so every 16-byte string is a
  field element; a share's y is 17 bytes).
* Validation of X25519 public keys (canonical encoding, not one of the points of
  small order) and of Ed25519 identity keys (not of small order), so that a bad
  key is refused when it is first seen instead of making a later key agreement fail.
* A binary Merkle tree over SHA-256 (domain-separated leaves and nodes) and exact
  bit-packing of b-bit words, used by the wire format.
* The exact discrete Gaussian sampler of Canonne, Kamath and Steinke (2020),
  vectorised with numpy but using only integer arithmetic on CSPRNG output, so
  the sampled distribution is exactly N_Z(0, sigma^2) for the rational sigma^2
  reported by :class:`DiscreteGaussianSampler`.

Nothing in this module reads a global or non-cryptographic random number
generator. All randomness comes from :class:`Csprng`, an AES-256-CTR keystream
keyed from ``os.urandom`` (or, in the loud insecure test mode, from a seed).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from privacy import Csprng
from privacy.errors import ConfigError, InvalidMessage, InvalidSignature

__all__ = [
    "ELEMENT_BYTES",
    "HASH_BYTES",
    "KEY_BYTES",
    "PRIME",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "SIGNATURE_BYTES",
    "SYMMETRIC_KEY_BYTES",
    "Csprng",
    "DiscreteGaussianSampler",
    "KeyPair",
    "add_prg_masks",
    "aead_decrypt",
    "aead_encrypt",
    "decode_share",
    "dh",
    "encode_share",
    "fwht",
    "hkdf",
    "lagrange_coefficients_at_zero",
    "merkle_proof",
    "merkle_root",
    "merkle_verify",
    "pack_bits",
    "prg_keystream",
    "seal",
    "shamir_reconstruct",
    "shamir_split",
    "sign",
    "unpack_bits",
    "unseal",
    "validate_ed25519_public",
    "validate_x25519_public",
    "verify",
]

#: Field modulus for Shamir sharing: the smallest prime above 2^128.
PRIME = 2**128 + 51
#: Secrets shared with Shamir: 16-byte seeds (128-bit security).
SECRET_BYTES = 16
#: Encoded field element width (a value < PRIME needs 129 bits).
ELEMENT_BYTES = 17
#: Encoded share: x-coordinate (uint32, big-endian) || y (17 bytes, big-endian).
SHARE_BYTES = 4 + ELEMENT_BYTES
KEY_BYTES = 32
SIGNATURE_BYTES = 64
HASH_BYTES = 32
#: AES-128-GCM keys for share transport (one key per pair, kind and round).
SYMMETRIC_KEY_BYTES = 16
GCM_TAG_BYTES = 16
_DOMAIN = b"secure-fml/secagg/v2/"
_X25519_P = 2**255 - 19
#: The X25519 u-coordinates of the points of small order (canonical encodings).
#: A peer key among them makes every key agreement with it all-zero.
_X25519_SMALL_ORDER = frozenset(
    {
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _X25519_P - 1,
    }
)
#: Canonical encodings of the eight Ed25519 points of small order: a roster key among
#: them verifies forged signatures.
_ED25519_SMALL_ORDER = frozenset(
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    )
)

# ---------------------------------------------------------------------------
# Randomness
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Key agreement, key derivation, signatures, AEAD, key validation
# ---------------------------------------------------------------------------


def validate_x25519_public(raw: bytes, *, what: str) -> None:
    """Raise :class:`InvalidMessage` unless ``raw`` is a canonical X25519 public key of
    large order. Checked when a key is first seen (stage 0), so a bad key is refused at
    once and attributed to its signer, instead of making a later key agreement fail."""
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise InvalidMessage(f"{what}: X25519 public key must be {KEY_BYTES} bytes")
    u = int.from_bytes(raw, "little")
    if u >= _X25519_P:
        raise InvalidMessage(f"{what}: non-canonical X25519 public key")
    if u in _X25519_SMALL_ORDER:
        raise InvalidMessage(f"{what}: X25519 public key of small order")


def validate_ed25519_public(key: Ed25519PublicKey, *, what: str) -> bytes:
    """The raw 32 bytes of an Ed25519 identity key; refuses the points of small order."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if raw in _ED25519_SMALL_ORDER:
        raise InvalidMessage(f"{what}: Ed25519 identity key of small order")
    return raw


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair with raw 32-byte encodings."""

    private: X25519PrivateKey
    public_bytes: bytes

    @classmethod
    def generate(cls, rng: Csprng | None = None) -> KeyPair:
        # With a Csprng we derive the key from its stream (used by the insecure
        # deterministic mode and, equivalently strong, by the secure stream).
        sk = (
            X25519PrivateKey.generate()
            if rng is None
            else X25519PrivateKey.from_private_bytes(rng.bytes(KEY_BYTES))
        )
        return cls(sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        if len(raw) != KEY_BYTES:
            raise InvalidMessage("X25519 private key must be 32 bytes")
        sk = X25519PrivateKey.from_private_bytes(raw)
        return cls(sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def from_seed(cls, seed: bytes, context: bytes) -> KeyPair:
        """The key pair whose private key is HKDF(seed, context): a 16-byte seed is what
        gets Shamir-shared, and the advertised public key commits to it."""
        if len(seed) != SECRET_BYTES:
            raise ConfigError(f"key seeds are {SECRET_BYTES} bytes")
        return cls.from_private_bytes(hkdf(seed, b"mask-key-pair", context, KEY_BYTES))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def hkdf(secret: bytes, purpose: bytes, context: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 with an ``info`` that names the purpose and binds the round context."""
    info = _DOMAIN + purpose + b"\x00" + context
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def dh(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """Raw X25519 shared secret; refuses small-order peers (all-zero output)."""
    if len(peer_public) != KEY_BYTES:
        raise InvalidMessage("X25519 public key must be 32 bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:  # all-zero shared secret: small-order peer key
        raise InvalidMessage("peer X25519 key is of small order") from exc


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes, *, what: str) -> None:
    """Raise :class:`InvalidSignature` unless ``signature`` verifies; never returns a bool."""
    if len(signature) != SIGNATURE_BYTES:
        raise InvalidSignature(f"{what}: signature must be {SIGNATURE_BYTES} bytes")
    try:
        public.verify(signature, message)
    except _CryptoInvalidSignature as exc:
        raise InvalidSignature(f"{what}: signature does not verify") from exc


_ZERO_NONCE = bytes(12)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-128-GCM under a single-use key (fresh per pair, kind and round): the nonce
    is the constant zero, which is safe exactly because no key encrypts twice."""
    if len(key) != SYMMETRIC_KEY_BYTES:
        raise ConfigError(f"share keys are {SYMMETRIC_KEY_BYTES} bytes")
    return AESGCM(key).encrypt(_ZERO_NONCE, plaintext, aad)


def unseal(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(key) != SYMMETRIC_KEY_BYTES:
        raise InvalidMessage(f"share keys are {SYMMETRIC_KEY_BYTES} bytes")
    try:
        return AESGCM(key).decrypt(_ZERO_NONCE, ciphertext, aad)
    except InvalidTag as exc:
        raise InvalidSignature("encrypted share: AES-GCM tag does not verify") from exc


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes, rng: Csprng) -> tuple[bytes, bytes]:
    nonce = rng.bytes(12)
    return nonce, AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(nonce) != 12:
        raise InvalidMessage("AES-GCM nonce must be 12 bytes")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag as exc:
        raise InvalidSignature("encrypted share: AES-GCM tag does not verify") from exc


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256(_DOMAIN)
    for p in parts:
        h.update(p)
    return h.digest()


# ---------------------------------------------------------------------------
# Merkle tree (SHA-256, RFC 6962-style domain separation of leaves and nodes)
# ---------------------------------------------------------------------------


def _node(a: bytes, b: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + a + b).digest()


def merkle_leaf(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + _DOMAIN + data).digest()


def _levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    if not leaves:
        raise ConfigError("a Merkle tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = [_node(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)]
        if len(cur) % 2:
            nxt.append(cur[-1])  # an odd node is promoted unchanged
        levels.append(nxt)
    return levels


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    return _levels(leaves)[-1][0]


def merkle_tree(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """All levels, for producing many proofs from one tree."""
    return _levels(leaves)


def merkle_proof(tree: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    """Sibling hashes from the leaf ``index`` up (promoted levels contribute nothing)."""
    out = []
    for level in tree[:-1]:
        sib = index ^ 1
        if sib < len(level):
            out.append(level[sib])
        index //= 2
    return tuple(out)


def merkle_verify(leaf: bytes, index: int, count: int, proof: Sequence[bytes], root: bytes) -> None:
    """Raise :class:`InvalidMessage` unless ``proof`` links ``leaf`` at ``index`` of a
    tree of ``count`` leaves to ``root``."""
    if not 0 <= index < count:
        raise InvalidMessage("Merkle leaf index out of range")
    h, width, it = leaf, count, iter(proof)
    try:
        while width > 1:
            sib = index ^ 1
            if sib < width:
                p = next(it)
                h = _node(p, h) if index & 1 else _node(h, p)
            index //= 2
            width = (width + 1) // 2
    except StopIteration:
        raise InvalidMessage("Merkle proof too short") from None
    if next(it, None) is not None:
        raise InvalidMessage("Merkle proof too long")
    if not constant_time_equal(h, root):
        raise InvalidMessage("Merkle proof does not lead to the agreed root")


# ---------------------------------------------------------------------------
# PRG masks over Z_{2^b}
# ---------------------------------------------------------------------------


def mask_dtype(bits: int) -> type[np.unsignedinteger]:
    return np.uint32 if bits <= 32 else np.uint64


def prg_keystream(seed: bytes, nbytes: int, out: bytearray | None = None) -> memoryview:
    """AES-256-CTR keystream from a full 256-bit seed (nonce 0; every seed is single-use)."""
    if len(seed) != KEY_BYTES:
        raise ConfigError("PRG seed must be 32 bytes")
    zeros = bytes(nbytes) if out is None or len(out) < nbytes + 15 else None
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    if out is None or zeros is not None:
        return memoryview(enc.update(bytes(nbytes)))
    # update_into avoids a fresh allocation per mask; it wants 15 bytes of slack.
    enc.update_into(_zeros(nbytes), out)
    return memoryview(out)[:nbytes]


_ZERO_CACHE: dict[int, bytes] = {}


def _zeros(n: int) -> bytes:
    z = _ZERO_CACHE.get(n)
    if z is None:
        _ZERO_CACHE.clear()
        z = bytes(n)
        _ZERO_CACHE[n] = z
    return z


def add_prg_masks(
    acc: np.ndarray, plus: Sequence[bytes], minus: Sequence[bytes], bits: int
) -> None:
    """acc += sum PRG(s) for s in plus - sum PRG(s) for s in minus, in place, mod 2^w.

    ``acc`` has dtype uint32 (bits <= 32) or uint64; numpy's unsigned arithmetic
    wraps modulo 2^32 / 2^64, which is a multiple of 2^bits, so the caller only
    has to reduce once at the end. Every mask word is uniform over 2^w, hence
    its low ``bits`` bits are uniform over Z_{2^bits}.
    """
    dtype = mask_dtype(bits)
    if acc.dtype != dtype:
        raise ConfigError(f"accumulator must be {np.dtype(dtype).name} for {bits} bits")
    d = acc.shape[0]
    nbytes = d * np.dtype(dtype).itemsize
    buf = bytearray(nbytes + 15)
    for seed in plus:
        ks = prg_keystream(seed, nbytes, buf)
        np.add(acc, np.frombuffer(ks, dtype=dtype, count=d), out=acc)
    for seed in minus:
        ks = prg_keystream(seed, nbytes, buf)
        np.subtract(acc, np.frombuffer(ks, dtype=dtype, count=d), out=acc)


def prg_mask(seed: bytes, d: int, bits: int) -> np.ndarray:
    """One mask vector, uniform over Z_{2^bits}^d."""
    dtype = mask_dtype(bits)
    out = np.frombuffer(prg_keystream(seed, d * np.dtype(dtype).itemsize), dtype=dtype).copy()
    if bits not in (32, 64):
        out &= dtype((1 << bits) - 1)
    return out


# ---------------------------------------------------------------------------
# Shamir secret sharing over GF(2^128 + 51)
# ---------------------------------------------------------------------------


def shamir_split(
    secret: bytes, xs: Sequence[int], threshold: int, rng: Csprng
) -> list[tuple[int, int]]:
    """Split a 16-byte secret into shares (x, f(x)) with deg f = threshold - 1.

    Any ``threshold`` shares determine f(0) = secret; any ``threshold - 1``
    shares are jointly uniform and independent of the secret because the
    threshold - 1 random coefficients are uniform over the field.
    """
    if len(secret) != SECRET_BYTES:
        raise ConfigError(f"Shamir secrets are {SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise ConfigError("need 1 <= threshold <= number of shares")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ConfigError("share x-coordinates must be distinct and nonzero")
    coeffs = [int.from_bytes(secret, "big")]
    # Coefficients uniform over GF(p): 32 random bytes reduced mod p are within
    # statistical distance 2^-127 of uniform.
    raw = rng.bytes(32 * (threshold - 1))
    coeffs += [
        int.from_bytes(raw[32 * i : 32 * i + 32], "big") % PRIME for i in range(threshold - 1)
    ]
    shares = []
    for x in xs:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        shares.append((x, acc))
    return shares


def lagrange_coefficients_at_zero(xs: Sequence[int]) -> list[int]:
    """Coefficients l_i with f(0) = sum l_i f(x_i), for distinct nonzero x_i.

    One modular inversion for the whole set (Montgomery's batch trick), so the
    server's cost per reconstructed secret is O(t^2) multiplications.
    """
    if len(set(xs)) != len(xs) or any(x % PRIME == 0 for x in xs):
        raise InvalidMessage("duplicate or zero share x-coordinates")
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        nums.append(num)
        dens.append(den)
    prefix = [1]
    for d in dens:
        prefix.append(prefix[-1] * d % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    invs = [0] * len(dens)
    for i in range(len(dens) - 1, -1, -1):
        invs[i] = inv * prefix[i] % PRIME
        inv = inv * dens[i] % PRIME
    return [n * v % PRIME for n, v in zip(nums, invs, strict=True)]


def shamir_reconstruct(
    shares: Sequence[tuple[int, int]], threshold: int, coeffs: Sequence[int] | None = None
) -> bytes:
    """Recover the 16-byte secret from at least ``threshold`` shares (uses the first t)."""
    if len(shares) < threshold:
        raise InvalidMessage(f"need {threshold} shares, got {len(shares)}")
    used = shares[:threshold]
    if coeffs is None:
        coeffs = lagrange_coefficients_at_zero([x for x, _ in used])
    value = sum(c * y for c, (_, y) in zip(coeffs, used, strict=True)) % PRIME
    if value >= 2 ** (8 * SECRET_BYTES):
        # A correct sharing of a 16-byte secret never reconstructs above 2^128.
        raise InvalidMessage("reconstructed value is not a 16-byte secret (bad shares)")
    return value.to_bytes(SECRET_BYTES, "big")


def shamir_evaluate(shares: Sequence[tuple[int, int]], x: int) -> int:
    """f(x) for the polynomial through ``shares`` (Lagrange at an arbitrary point)."""
    acc = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, (xj, _) in enumerate(shares):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        acc = (acc + yi * num * pow(den, -1, PRIME)) % PRIME
    return acc


def encode_element(y: int) -> bytes:
    if not 0 <= y < PRIME:
        raise ConfigError("field element out of range")
    return y.to_bytes(ELEMENT_BYTES, "big")


def decode_element(raw: bytes) -> int:
    if len(raw) != ELEMENT_BYTES:
        raise InvalidMessage(f"field element must be {ELEMENT_BYTES} bytes")
    y = int.from_bytes(raw, "big")
    if y >= PRIME:
        raise InvalidMessage("field element out of range")
    return y


def encode_share(share: tuple[int, int]) -> bytes:
    x, y = share
    if not 0 < x < 2**32 or not 0 <= y < PRIME:
        raise ConfigError("share out of range")
    return struct.pack(">I", x) + y.to_bytes(ELEMENT_BYTES, "big")


def decode_share(raw: bytes) -> tuple[int, int]:
    """Strict inverse of :func:`encode_share`: exact length, nonzero x, y < p."""
    if len(raw) != SHARE_BYTES:
        raise InvalidMessage(f"share must be exactly {SHARE_BYTES} bytes, got {len(raw)}")
    (x,) = struct.unpack(">I", raw[:4])
    y = int.from_bytes(raw[4:], "big")
    if x == 0 or y >= PRIME:
        raise InvalidMessage("share coordinates out of range")
    return x, y


# ---------------------------------------------------------------------------
# Bit-packing of b-bit words (masked inputs on the wire)
# ---------------------------------------------------------------------------


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Little-endian bitstream of ``values`` (each < 2^bits), ceil(d * bits / 8) bytes.

    Bonawitz et al. count masked inputs at exactly b bits per entry; padding b-bit
    sums to whole bytes (26-bit sums in 4-byte words) costs up to 23% more.
    """
    v = np.ascontiguousarray(values)
    if v.ndim != 1 or not 1 <= bits <= 64:
        raise ConfigError("pack_bits needs a 1-D array and 1 <= bits <= 64")
    if bits % 8 == 0:
        w = bits // 8
        raw = v.astype(v.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1, v.itemsize)
        return raw[:, :w].tobytes()
    out = bytearray()
    step = 1 << 16  # bounded memory: 64 bits of scratch per entry, per chunk
    for lo in range(0, v.shape[0], step * 8):
        chunk = v[lo : lo + step * 8].astype("<u8")
        allbits = np.unpackbits(chunk.view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
        out += np.packbits(allbits[:, :bits].reshape(-1), bitorder="little").tobytes()
    return bytes(out)


def unpack_bits(data: bytes | memoryview, bits: int, count: int) -> np.ndarray:
    """Strict inverse of :func:`pack_bits` (uint64): exact length, zero padding bits."""
    if not 1 <= bits <= 64 or count < 0:
        raise ConfigError("unpack_bits needs 1 <= bits <= 64 and count >= 0")
    need = (count * bits + 7) // 8
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != need:
        raise InvalidMessage(f"packed vector has {buf.size} bytes, expected {need}")
    if bits % 8 == 0:
        w = bits // 8
        full = np.zeros((count, 8), dtype=np.uint8)
        full[:, :w] = buf.reshape(count, w)
        return full.view("<u8").reshape(count).astype(np.uint64)
    allbits = np.unpackbits(buf, bitorder="little")
    if allbits[count * bits :].any():
        raise InvalidMessage("nonzero padding bits after the packed vector")
    words = np.zeros((count, 64), dtype=np.uint8)
    words[:, :bits] = allbits[: count * bits].reshape(count, bits)
    return (
        np.packbits(words, axis=1, bitorder="little").view("<u8").reshape(count).astype(np.uint64)
    )


# ---------------------------------------------------------------------------
# Exact discrete Gaussian sampler (Canonne, Kamath, Steinke 2020)
# ---------------------------------------------------------------------------

# All integers stay below 2^62 so that numpy int64/uint64 never overflows.
_INT_LIMIT = 2**62


class DiscreteGaussianSampler:
    """Exact sampler of N_Z(0, sigma^2) using integer arithmetic on CSPRNG output.

    CKS20 Algorithm 3: draw Y from a discrete Laplace with scale t = floor(sigma)+1
    (Algorithm 2), accept with probability exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)).
    Each Bernoulli(exp(-gamma)) for rational gamma uses Algorithm 1, which needs
    only Bernoulli(n/d) = [uniform{0..d-1} < n] draws, so no floating point
    touches the distribution.

    ``sigma^2`` is rounded *up* to a dyadic rational a/2^k (k as large as keeps
    every intermediate below 2^62). The relative change is below 2^-20 for
    sigma <= 2^10 and it only ever adds noise, so accounting with the requested
    sigma stays conservative. The exact value used is :attr:`sigma_sq`.
    Values of sigma above 2^15 are refused: the acceptance test needs uniform
    integers below 2 sigma^2 t^2 ~ 2 sigma^4, which must stay under 2^62. Callers
    needing more noise in integer units should lower the fixed-point scale.
    """

    MAX_SIGMA = float(2**15)

    def __init__(self, sigma: float, rng: Csprng) -> None:
        if not math.isfinite(sigma) or sigma <= 0:
            raise ConfigError("discrete Gaussian sigma must be a positive finite number")
        if sigma > self.MAX_SIGMA:
            raise ConfigError(f"discrete Gaussian sigma must be <= {self.MAX_SIGMA:g}")
        self._rng = rng
        t = math.floor(sigma) + 1
        sig2 = Fraction(sigma) ** 2
        # Pick the largest power-of-two denominator keeping 2*a*B*t^2 < 2^62.
        k = 40
        while k > 0:
            a = math.ceil(sig2 * 2**k)
            if 2 * a * 2**k * t * t < _INT_LIMIT:
                break
            k -= 1
        a = math.ceil(sig2 * 2**k)
        b = 2**k
        if 2 * a * b * t * t >= _INT_LIMIT:
            raise ConfigError("discrete Gaussian sigma too large for exact integer sampling")
        self.sigma_sq = Fraction(a, b)
        self._a, self._b, self._t = a, b, t
        self._den = 2 * a * b * t * t  # gamma = (|Y| b t - a)^2 / den

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma_sq)

    # --- Bernoulli helpers (vectorised over arrays of equal length) --------

    def _bern_ratio(self, num: np.ndarray, den: np.ndarray | int) -> np.ndarray:
        """Bernoulli(num/den) elementwise, num <= den < 2^62."""
        n = num.shape[0]
        if n == 0:
            return np.zeros(0, dtype=bool)
        if np.ndim(den) == 0:
            d = int(den)
            if d == 1:  # num in {0, 1}: the outcome is certain, no randomness needed
                return num >= 1
            return self._rng.below(d, n) < num.astype(np.uint64)
        d_arr = np.broadcast_to(np.asarray(den, dtype=np.uint64), (n,))
        return self._rng.below(d_arr) < num.astype(np.uint64)

    def _bern_exp_frac(self, num: np.ndarray, den: np.ndarray | int) -> np.ndarray:
        """Bernoulli(exp(-num/den)) for 0 <= num/den <= 1 (CKS20 Algorithm 1)."""
        n = num.shape[0]
        den_arr = np.broadcast_to(np.asarray(den, dtype=np.int64), (n,))
        k = np.ones(n, dtype=np.int64)
        active = np.arange(n)
        scalar_den = np.ndim(den) == 0
        while active.size:
            # A_k ~ Bernoulli(gamma / k) = Bernoulli(gamma) AND Bernoulli(1/k).
            a = self._bern_ratio(num[active], den if scalar_den else den_arr[active])
            kk = k[active]
            # Bernoulli(1/1) is certain: draw only for k > 1, one scalar-bound batch per
            # distinct k (k stays small: P(k > j) <= 1/j!).
            for kv in np.unique(kk[kk > 1]).tolist():
                sel = np.nonzero(kk == kv)[0]
                a[sel] &= self._rng.below(int(kv), sel.size) == 0
            k[active[a]] += 1
            active = active[a]
        return (k % 2) == 1

    def _bern_exp(
        self, g_int: np.ndarray, g_num: np.ndarray, g_den: np.ndarray | int
    ) -> np.ndarray:
        """Bernoulli(exp(-(g_int + g_num/g_den))), g_num < g_den."""
        n = g_int.shape[0]
        ok = np.ones(n, dtype=bool)
        remaining = g_int.copy()
        active = np.nonzero(remaining > 0)[0]
        ones = np.ones(n, dtype=np.int64)
        while active.size:
            b = self._bern_exp_frac(ones[active], 1)
            ok[active[~b]] = False
            remaining[active] -= 1
            active = active[b & (remaining[active] > 0)]
        idx = np.nonzero(ok)[0]
        if np.ndim(g_den) == 0:
            ok[idx] = self._bern_exp_frac(g_num[idx], int(g_den))
        else:
            den = np.broadcast_to(np.asarray(g_den, dtype=np.int64), (n,))
            ok[idx] = self._bern_exp_frac(g_num[idx], den[idx])
        return ok

    def _discrete_laplace(self, n: int) -> np.ndarray:
        """n samples of the discrete Laplace with scale t (CKS20 Algorithm 2, s = 1)."""
        t = self._t
        out = np.empty(0, dtype=np.int64)
        while out.size < n:
            m = max(16, int((n - out.size) * 1.7))
            u = self._rng.below(t, m).astype(np.int64)
            keep = self._bern_exp_frac(u, t)
            u = u[keep]
            v = np.zeros(u.size, dtype=np.int64)
            active = np.arange(u.size)
            ones = np.ones(u.size, dtype=np.int64)
            while active.size:
                a = self._bern_exp_frac(ones[active], 1)
                v[active[a]] += 1
                active = active[a]
            x = u + t * v
            sign_bit = self._rng.below(2, u.size).astype(bool)
            good = ~(sign_bit & (x == 0))
            y = np.where(sign_bit, -x, x)[good]
            out = np.concatenate([out, y])
        return out[:n]

    def sample(self, n: int) -> np.ndarray:
        """n independent draws of N_Z(0, sigma_sq) as int64."""
        if n < 0:
            raise ConfigError("sample size must be >= 0")
        a, b, t = self._a, self._b, self._t
        out = np.empty(0, dtype=np.int64)
        while out.size < n:
            m = max(16, int((n - out.size) * 1.3))
            y = self._discrete_laplace(m)
            # gamma = (|Y| - s2/t)^2 / (2 s2) = (|Y| b t - a)^2 / (2 a b t^2).
            # Square exactly per distinct |Y| with Python integers (few distinct
            # values), then split into integer part and remainder.
            absy, inv = np.unique(np.abs(y), return_inverse=True)
            g_int_u = np.empty(absy.size, dtype=np.int64)
            g_rem_u = np.empty(absy.size, dtype=np.int64)
            for i, val in enumerate(absy.tolist()):
                q, r = divmod((val * b * t - a) ** 2, self._den)
                g_int_u[i] = min(q, 2**40)  # exp(-2^40) is 0 for any practical purpose
                g_rem_u[i] = r
            accept = self._bern_exp(g_int_u[inv], g_rem_u[inv], self._den)
            out = np.concatenate([out, y[accept]])
        return out[:n]


# ---------------------------------------------------------------------------
# Randomized Hadamard rotation
# ---------------------------------------------------------------------------


def fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform along the last axis (length 2^k)."""
    n = x.shape[-1]
    if n & (n - 1):
        raise ConfigError("Hadamard length must be a power of two")
    y = np.array(x, dtype=np.float64, copy=True)
    h = 1
    while h < n:
        y = y.reshape(-1, n // (2 * h), 2, h)
        a = y[:, :, 0, :].copy()
        b = y[:, :, 1, :]
        y[:, :, 0, :] += b
        y[:, :, 1, :] = a - b
        h *= 2
    return y.reshape(x.shape) / math.sqrt(n)
