"""Known-answer and statistical tests for the private primitives (hazmat layer)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from aggregation import _primitives as P
from privacy.errors import ConfigError, InvalidMessage, InvalidSignature


def _miller_rabin(n: int) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71):
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_prime_is_the_smallest_prime_above_2_128() -> None:
    assert P.PRIME > 2**128
    assert _miller_rabin(P.PRIME)
    assert not any(_miller_rabin(2**128 + c) for c in range(1, P.PRIME - 2**128))


def test_x25519_rfc7748_vector() -> None:
    # RFC 7748 section 6.1.
    a = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    b = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    a_pub = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    b_pub = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    ka, kb = P.KeyPair.from_private_bytes(a), P.KeyPair.from_private_bytes(b)
    assert ka.public_bytes.hex() == a_pub
    assert kb.public_bytes.hex() == b_pub
    assert ka.private.exchange(X25519PrivateKey.from_private_bytes(b).public_key()).hex() == shared


def test_pairwise_derivations_are_symmetric_and_bind_the_context() -> None:
    from aggregation._client import pad_seed, share_keys_of

    a, b = P.KeyPair.generate(), P.KeyPair.generate()
    z_ab, z_ba = P.dh(a.private, b.public_bytes), P.dh(b.private, a.public_bytes)
    assert z_ab == z_ba
    ctx = bytes(32)
    assert pad_seed(z_ab, ctx, 1, 2) == pad_seed(z_ba, ctx, 2, 1)
    assert pad_seed(z_ab, ctx, 1, 2) != pad_seed(z_ab, b"\x01" * 32, 1, 2)
    assert pad_seed(z_ab, ctx, 1, 2) != pad_seed(z_ab, ctx, 1, 3)
    kb, ks, kt = share_keys_of(z_ab, ctx, 1, 2)
    assert len({kb, ks}) == 2 and len(kb) == 16 and len(kt) == 32
    # Direction matters for share keys (dealer 1 -> holder 2 differs from 2 -> 1).
    assert share_keys_of(z_ab, ctx, 2, 1)[0] != kb
    assert share_keys_of(z_ab, b"\x02" * 32, 1, 2)[0] != kb


def test_aes_ctr_sp800_38a_and_prg_matches_independent_ecb() -> None:
    key = bytes.fromhex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    # NIST SP 800-38A F.1.5 (ECB-AES256), block 1.
    assert (
        ecb.update(bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")).hex()
        == "f3eed1bdb5d2a03c064b5a7e3db181f8"
    )
    # Our PRG is AES-256-CTR from counter block 0: keystream block i = AES_k(i).
    counters = b"".join(i.to_bytes(16, "big") for i in range(64))
    expected = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(counters)
    assert bytes(P.prg_keystream(key, 1024)) == expected
    buf = bytearray(1024 + 15)
    assert bytes(P.prg_keystream(key, 1024, buf)) == expected
    mask = P.prg_mask(key, 256, 32)
    assert np.array_equal(mask, np.frombuffer(expected, dtype="<u4").astype(np.uint32))
    assert np.array_equal(P.prg_mask(key, 256, 12), mask & 0xFFF)


def test_add_prg_masks_wraps_mod_2_32() -> None:
    seeds = [bytes([i]) * 32 for i in range(3)]
    acc = np.zeros(1000, dtype=np.uint32)
    P.add_prg_masks(acc, seeds[:2], seeds[2:], 32)
    ref = (
        P.prg_mask(seeds[0], 1000, 32).astype(np.int64)
        + P.prg_mask(seeds[1], 1000, 32).astype(np.int64)
        - P.prg_mask(seeds[2], 1000, 32).astype(np.int64)
    ) % 2**32
    assert np.array_equal(acc.astype(np.int64), ref)


@settings(max_examples=25, deadline=None)
@given(
    secret=st.binary(min_size=16, max_size=16),
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_shamir_t_of_n_reconstructs_from_any_t(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = P.shamir_split(secret, xs, t, P.Csprng())
    subset = data.draw(st.permutations(shares))[:t]
    assert P.shamir_reconstruct(subset, t) == secret
    encoded = [P.encode_share(s) for s in shares]
    assert all(len(e) == P.SHARE_BYTES for e in encoded)
    assert [P.decode_share(e) for e in encoded] == shares
    if t > 1:
        with pytest.raises(InvalidMessage):
            P.shamir_reconstruct(subset[: t - 1], t)


def test_t_minus_1_shares_are_uniform_and_independent_of_secret() -> None:
    # For t = 3, the two shares at x = 1, 2 must be uniform over the field
    # whatever the secret. Bin the top and low bits of each share for two very
    # different secrets and compare with chi-square tests.
    rng = P.Csprng()
    samples: dict[bytes, list[tuple[int, int]]] = {}
    secrets = [bytes(16), b"\xff" * 16]
    for s in secrets:
        rows = []
        for _ in range(3000):
            (_, y1), (_, y2) = P.shamir_split(s, [1, 2, 3], 3, rng)[:2]
            rows.append((y1 % 16, (y2 * 16) // P.PRIME))
        samples[s] = rows
    for s in secrets:
        arr = np.array(samples[s])
        for col in range(2):
            counts = np.bincount(arr[:, col], minlength=16)
            assert stats.chisquare(counts).pvalue > 1e-4
        joint = np.bincount(arr[:, 0] * 16 + arr[:, 1], minlength=256)
        assert stats.chisquare(joint).pvalue > 1e-4
    a = np.array(samples[secrets[0]])[:, 0]
    b = np.array(samples[secrets[1]])[:, 0]
    table = np.stack([np.bincount(a, minlength=16), np.bincount(b, minlength=16)])
    assert stats.chi2_contingency(table).pvalue > 1e-4


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        bytes(P.SHARE_BYTES - 1),
        bytes(P.SHARE_BYTES + 1),
        bytes(P.SHARE_BYTES),  # x = 0
        (1).to_bytes(4, "big") + P.PRIME.to_bytes(17, "big"),  # y = p
    ],
)
def test_share_decoding_is_strict(raw: bytes) -> None:
    with pytest.raises(InvalidMessage):
        P.decode_share(raw)


@settings(max_examples=50, deadline=None)
@given(delta=st.integers(1, P.PRIME - 1), which=st.integers(0, 1))
def test_corrupted_share_never_reconstructs_the_secret(delta: int, which: int) -> None:
    # Reconstruction is linear, f(0) = sum_i lambda_i y_i: corrupting share i by delta
    # moves the result by exactly lambda_i * delta (mod p), which is never 0. So the
    # corrupted result is a known wrong value, or (when it leaves the 16-byte range) a
    # typed error; it is never the secret.
    secret = b"\x01" * 16
    shares = P.shamir_split(secret, [1, 2, 3], 2, P.Csprng())
    pair = [shares[0], shares[1]]
    x, y = pair[which]
    pair[which] = (x, (y + delta) % P.PRIME)
    lam = P.lagrange_coefficients_at_zero((shares[0][0], shares[1][0]))[which]
    expected = (int.from_bytes(secret, "big") + lam * delta) % P.PRIME
    assert expected != int.from_bytes(secret, "big")
    if expected < 2**128:
        assert P.shamir_reconstruct(pair, 2) == expected.to_bytes(16, "big")
    else:
        with pytest.raises(InvalidMessage):
            P.shamir_reconstruct(pair, 2)


@settings(max_examples=30, deadline=None)
@given(xs=st.lists(st.integers(1, 2**31), min_size=1, max_size=12, unique=True))
def test_batched_lagrange_matches_per_point_inversion(xs: list[int]) -> None:
    fast = P.lagrange_coefficients_at_zero(xs)
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num, den = num * xj % P.PRIME, den * (xj - xi) % P.PRIME
        assert fast[i] == num * pow(den, -1, P.PRIME) % P.PRIME


def test_signatures_and_aead_raise_on_tampering() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.generate()
    sig = P.sign(sk, b"msg")
    P.verify(sk.public_key(), sig, b"msg", what="t")
    with pytest.raises(InvalidSignature):
        P.verify(sk.public_key(), sig, b"msg2", what="t")
    with pytest.raises(InvalidSignature):
        P.verify(sk.public_key(), sig[:-1], b"msg", what="t")
    key = bytes(32)
    nonce, ct = P.aead_encrypt(key, b"secret", b"aad", P.Csprng())
    assert P.aead_decrypt(key, nonce, ct, b"aad") == b"secret"
    with pytest.raises(InvalidSignature):
        P.aead_decrypt(key, nonce, ct, b"other aad")
    with pytest.raises(InvalidSignature):
        P.aead_decrypt(key, nonce, ct[:-1] + bytes([ct[-1] ^ 1]), b"aad")


def test_csprng_below_is_uniform() -> None:
    draws = P.Csprng().below(7, 70_000)
    assert draws.max() < 7
    assert stats.chisquare(np.bincount(draws.astype(np.int64), minlength=7)).pvalue > 1e-4
    with pytest.raises(ConfigError):
        P.Csprng().below(0, 3)


@pytest.mark.parametrize("bound", [2, 8, 7, 12])
def test_csprng_below_scalar_and_array_paths_are_uniform(bound: int) -> None:
    rng = P.Csprng()
    scalar = rng.below(bound, 40_000).astype(np.int64)
    array = rng.below(np.full(40_000, bound, dtype=np.uint64)).astype(np.int64)
    for draws in (scalar, array):
        assert draws.min() >= 0 and draws.max() < bound
        assert stats.chisquare(np.bincount(draws, minlength=bound)).pvalue > 1e-4


def _dgauss_pmf(sigma_sq: float, support: np.ndarray) -> np.ndarray:
    w = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma_sq))
    full = np.arange(-2000, 2001)
    return w / np.exp(-(full.astype(np.float64) ** 2) / (2 * sigma_sq)).sum()


@pytest.mark.parametrize("sigma", [0.6, 1.5, 4.0])
def test_discrete_gaussian_matches_exact_pmf(sigma: float) -> None:
    sampler = P.DiscreteGaussianSampler(sigma, P.Csprng())
    x = sampler.sample(200_000)
    s2 = float(sampler.sigma_sq)
    assert abs(s2 - sigma**2) <= 1e-6 * sigma**2 and s2 >= sigma**2
    lim = math.ceil(5 * sigma)
    support = np.arange(-lim, lim + 1)
    pmf = _dgauss_pmf(s2, support)
    counts = np.array([(x == k).sum() for k in support], dtype=np.float64)
    tail_obs = x.size - counts.sum()
    tail_exp = max(0.0, 1.0 - pmf.sum())
    obs = np.append(counts, tail_obs)
    exp = np.append(pmf, tail_exp) * x.size
    keep = exp > 5
    obs_k, exp_k = obs[keep], exp[keep]
    exp_k *= obs_k.sum() / exp_k.sum()
    assert stats.chisquare(obs_k, exp_k).pvalue > 1e-4
    theory_var = float((support.astype(np.float64) ** 2 * pmf).sum())
    assert abs(x.mean()) < 5 * math.sqrt(theory_var / x.size)
    assert abs(x.var() / theory_var - 1) < 0.02


def test_discrete_gaussian_large_sigma_moments_and_limits() -> None:
    sampler = P.DiscreteGaussianSampler(300.0, P.Csprng())
    x = sampler.sample(100_000)
    assert abs(x.mean()) < 5 * 300 / math.sqrt(x.size)
    assert abs(x.var() / 300.0**2 - 1) < 0.03
    for bad in (0.0, -1.0, float("nan"), 2.0**16):
        with pytest.raises(ConfigError):
            P.DiscreteGaussianSampler(bad, P.Csprng())


def test_fwht_is_orthonormal_involution() -> None:
    x = np.random.default_rng(0).normal(size=(64,))
    y = P.fwht(x)
    assert np.allclose(np.linalg.norm(y), np.linalg.norm(x))
    assert np.allclose(P.fwht(y), x)
    with pytest.raises(ConfigError):
        P.fwht(np.zeros(6))


# ---------------------------------------------------------------- key validation


_P25519 = 2**255 - 19
_SMALL_ORDER_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P25519 - 1,
]


@pytest.mark.parametrize("u", _SMALL_ORDER_U)
def test_small_order_x25519_keys_are_refused_and_really_are_small_order(u: int) -> None:
    raw = u.to_bytes(32, "little")
    with pytest.raises(InvalidMessage, match="small order"):
        P.validate_x25519_public(raw, what="k")
    # Independent check: a key exchange with the point is all-zero (cryptography refuses).
    with pytest.raises(InvalidMessage):
        P.dh(X25519PrivateKey.generate(), raw)


@pytest.mark.parametrize("u", [_P25519, _P25519 + 1, _P25519 + 5, 2**255 + 9, 2**256 - 1])
def test_non_canonical_x25519_encodings_are_refused(u: int) -> None:
    with pytest.raises(InvalidMessage, match="non-canonical"):
        P.validate_x25519_public(u.to_bytes(32, "little"), what="k")


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_every_accepted_x25519_key_agrees_to_a_nonzero_secret(raw: bytes) -> None:
    try:
        P.validate_x25519_public(raw, what="k")
    except InvalidMessage:
        return
    assert P.dh(X25519PrivateKey.generate(), raw) != bytes(32)


def test_small_order_ed25519_identity_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    ident = Ed25519PublicKey.from_public_bytes(bytes.fromhex("01" + "00" * 31))
    with pytest.raises(InvalidMessage, match="small order"):
        P.validate_ed25519_public(ident, what="id")
    good = Ed25519PrivateKey.generate().public_key()
    assert len(P.validate_ed25519_public(good, what="id")) == 32


# ---------------------------------------------------------------- merkle, packing


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 70), data=st.data())
def test_merkle_proofs_verify_and_bind_leaf_index_and_root(n: int, data: st.DataObject) -> None:
    leaves = [P.merkle_leaf(bytes([i % 256, i // 256])) for i in range(n)]
    tree = P.merkle_tree(leaves)
    root = tree[-1][0]
    i = data.draw(st.integers(0, n - 1))
    proof = P.merkle_proof(tree, i)
    assert len(proof) <= max(1, (n - 1).bit_length())
    P.merkle_verify(leaves[i], i, n, proof, root)
    with pytest.raises(InvalidMessage):
        P.merkle_verify(P.merkle_leaf(b"other"), i, n, proof, root)
    if n > 1:
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        with pytest.raises(InvalidMessage):
            P.merkle_verify(leaves[i], j, n, proof, root)
        with pytest.raises(InvalidMessage):
            P.merkle_verify(leaves[i], i, n, proof[:-1], root)


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 62), data=st.data())
def test_bit_packing_roundtrips_at_exactly_b_bits(bits: int, data: st.DataObject) -> None:
    d = data.draw(st.integers(1, 300))
    vals = np.array(
        data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=d, max_size=d)), dtype=np.uint64
    )
    raw = P.pack_bits(vals, bits)
    assert len(raw) == (d * bits + 7) // 8
    assert np.array_equal(P.unpack_bits(raw, bits, d), vals)
    with pytest.raises(InvalidMessage):
        P.unpack_bits(raw[:-1], bits, d)
    if (d * bits) % 8:
        with pytest.raises(InvalidMessage, match="padding"):
            P.unpack_bits(raw[:-1] + bytes([raw[-1] | 0x80]), bits, d)


def test_bit_packing_matches_an_independent_bit_string() -> None:
    vals = np.array([5, 0, 7, 1, 6], dtype=np.uint64)  # 3 bits each, little-endian stream
    stream = "".join(format(int(v), "03b")[::-1] for v in vals) + "0"
    expected = bytes(int(stream[i : i + 8][::-1], 2) for i in range(0, 16, 8))
    assert P.pack_bits(vals, 3) == expected


def test_single_use_share_encryption_binds_key_and_data() -> None:
    key = bytes(range(16))
    ct = P.seal(key, b"share", b"aad")
    assert len(ct) == 5 + 16 and P.unseal(key, ct, b"aad") == b"share"
    with pytest.raises(InvalidSignature):
        P.unseal(key, ct, b"aad2")
    with pytest.raises(InvalidSignature):
        P.unseal(bytes(16), ct, b"aad")
