"""A client's own secure-aggregation policy, and the (k, t) analysis it rests on.

The coordinator proposes the parameters of a round (mode, degree k, threshold t,
modulus bits) together with the roster; a client never takes them on trust. It
builds a :class:`ClientPolicy` from settings that do not depend on the roster size
(dropout fraction delta, corruption fraction gamma, security bits, the minimum
number of survivors its differential-privacy accounting assumes, the number of
attempts a server may make), and for the roster size n it is shown it derives
the parameters it accepts. Weaker parameters are refused with
:class:`~privacy.errors.PolicyViolation`.

The analysis (written out with the numbers in ``docs/secure_aggregation.md``):

* **Graph.** Each client draws its k holders uniformly at random from the roster
  with its own CSPRNG (SecAgg: everybody). Corruption is static: at most
  c = floor(gamma n) roster members collude with the server, fixed before the
  honest clients draw. Dropouts and withheld messages are adversarial and chosen
  after the graph is known; the survivor set U3 is agreed globally (a signature
  quorum over the round's status vector), so every honest client acts on the
  same U3.
* **What a server can learn.** It can only unmask a combination of masked inputs
  in which every honest pairwise mask between two live clients cancels, and in
  which it can remove the self mask of every member, i.e. a set S of live honest
  clients, closed under masking edges, in which every u has at least t of its
  holders revealing its self-mask share. Honest holders reveal only when they are
  live themselves, and every revealing holder of u is one u masked with, so
  revealing holders of u lie in S or among the colluders: every u in S has at
  least t of its k draws in S union C. The union bound over all such S of size
  s < s* (s* = honest inputs every revealed sum must contain) is

      P[fail] <= sum_{s=1}^{s*-1} C(h, s) * P[Hyp(n - 1, s - 1 + c, k) >= t]^s,

  with h = n - c honest clients; it is exact in the dropout pattern (any U3) and
  counts every set the server could aim for. With the complete graph (SecAgg),
  S must be every live honest client, so the sum always has at least
  |U3| - c >= (1 - delta) n - c honest inputs.
* **Agreement.** A certificate is a bitmap of the clients that signed the status
  vector; a client checks ``samples`` random entries of it (its own coins, after
  the bitmap is fixed). Two different status vectors cannot both have more than
  (n + c)/2 valid signatures (honest clients sign once); a certificate of at least
  Q entries for a vector with at most (n + c)/2 signers has at least a fraction
  phi = 1 - (n + c)/(2Q) of invalid entries, and is accepted with probability at
  most (1 - phi)^samples. A union bound over the n clients bounds the chance
  that any honest client acts on a minority view.
* **Tries.** A server that aborts and retries gets fresh randomness each time;
  the bounds above hold per attempt, so the policy asks for
  ``security_bits + max_attempts_log2`` bits per attempt.
* **Correctness** (for the derivation only, never a reason to refuse): with at
  most floor(delta n) clients missing at any stage (dropouts or withholding
  insiders), every client keeps at least t responsive holders except with
  probability n * P[Hyp(n - 1, floor(delta n), k) > k - t].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln, logsumexp

from privacy.errors import ConfigError, PolicyViolation

__all__ = ["ClientPolicy", "SecurityAnalysis", "analyse", "derive_parameters"]

_LN2 = math.log(2.0)


def _lcomb(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)


def _log_hyp_sf(population: int, successes: np.ndarray, draws: int, at_least: int) -> np.ndarray:
    """ln P[X >= at_least] for X ~ Hypergeometric(population, successes[i], draws), elementwise."""
    K = np.atleast_1d(np.asarray(successes, dtype=np.float64))
    if at_least <= 0:
        return np.zeros_like(K)
    if at_least > draws:
        return np.full_like(K, -np.inf)
    j = np.arange(at_least, draws + 1, dtype=np.float64)[None, :]
    KK = K[:, None]
    ok = (j <= KK) & (draws - j <= population - KK)
    jj = np.where(ok, j, 0.0)
    terms = _lcomb(KK, jj) + _lcomb(population - KK, draws - jj) - _lcomb(population, draws)
    terms = np.where(ok, terms, -np.inf)
    return np.asarray(logsumexp(terms, axis=1))


@dataclass(frozen=True)
class SecurityAnalysis:
    """The numbers a client's decision rests on, for one (n, k, t) and policy."""

    n: int
    k: int
    t: int
    corrupt: int
    #: Honest inputs every revealed sum contains (except with 2^log2_security).
    honest_in_sum: int
    #: Survivors (and signatures) the client requires at each count check.
    required_survivors: int
    #: Random certificate entries the client verifies before revealing anything.
    samples: int
    #: log2 of the per-attempt probability that a server learns a smaller sum.
    log2_graph: float
    #: log2 of the per-attempt probability that an honest client acts on a minority view.
    log2_quorum: float
    #: log2 of the probability that a round with <= floor(delta n) missing fails.
    log2_correctness: float

    @property
    def log2_security(self) -> float:
        """log2 of the per-attempt failure probability (graph + agreement)."""
        return float(np.logaddexp2(self.log2_graph, self.log2_quorum))

    @property
    def complete(self) -> bool:
        return self.k >= self.n - 1


@dataclass(frozen=True, kw_only=True)
class ClientPolicy:
    """What a client requires of every round, whatever the roster size.

    ``max_dropout_fraction`` (delta) bounds every client missing from a stage for
    any reason, dropouts and withholding insiders alike; the client requires at
    least (1 - delta) n advertisements, survivors and consistency signatures.
    ``max_corrupt_fraction`` (gamma): at most floor(gamma n) roster members collude
    with the server. ``min_survivor_fraction`` / ``min_survivors``: the minimum
    number of survivors m(n) = max(min_survivors, ceil(f n)) the client's
    differential-privacy accounting assumes (with c colluders, every revealed sum
    must hold m(n) - c honest inputs). ``security_bits`` per attempt, plus
    ``max_attempts_log2`` for a server that aborts and retries. ``input_bits``:
    if set, the client's encoded inputs fit in that many bits (sign included), and
    it requires a modulus of at least input_bits + ceil(log2 n) bits so the sum of
    n inputs cannot wrap.
    """

    max_dropout_fraction: float = 0.1
    max_corrupt_fraction: float = 0.05
    security_bits: int = 40
    correctness_bits: int = 20
    min_survivor_fraction: float = 0.5
    min_survivors: int = 3
    max_attempts_log2: int = 20
    input_bits: int | None = None

    def __post_init__(self) -> None:
        for name in ("security_bits", "correctness_bits", "min_survivors", "max_attempts_log2"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int")
        for name in ("max_dropout_fraction", "max_corrupt_fraction", "min_survivor_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v < 1.0:
                raise ConfigError(f"{name} must be a number in [0, 1)")
        if self.max_dropout_fraction + self.max_corrupt_fraction >= 0.5:
            raise ConfigError("max_dropout_fraction + max_corrupt_fraction must be < 0.5")
        if not 1 <= self.security_bits <= 256:
            raise ConfigError("security_bits must be in [1, 256]")
        if not 1 <= self.correctness_bits <= 128:
            raise ConfigError("correctness_bits must be in [1, 128]")
        if not 0 <= self.max_attempts_log2 <= 64:
            raise ConfigError("max_attempts_log2 must be in [0, 64]")
        if self.min_survivors < 1:
            raise ConfigError("min_survivors must be >= 1")
        if self.input_bits is not None and (
            not isinstance(self.input_bits, int) or not 2 <= self.input_bits <= 60
        ):
            raise ConfigError("input_bits must be None or an int in [2, 60]")

    # ------------------------------------------------------------ n-dependent

    def corrupt(self, n: int) -> int:
        return math.floor(self.max_corrupt_fraction * n)

    def missing(self, n: int) -> int:
        return math.floor(self.max_dropout_fraction * n)

    def dp_survivors(self, n: int) -> int:
        return max(self.min_survivors, math.ceil(self.min_survivor_fraction * n - 1e-9))

    def required_survivors(self, n: int) -> int:
        """The count every stage must reach: (1 - delta) n, the DP minimum, a majority
        large enough that two disjoint views cannot both collect it."""
        return max(
            math.ceil(n - self.max_dropout_fraction * n - 1e-9),
            self.dp_survivors(n),
            (n + self.corrupt(n)) // 2 + 1,
        )

    def honest_in_sum(self, n: int) -> int:
        return self.dp_survivors(n) - self.corrupt(n)

    def min_modulus_bits(self, n: int) -> int:
        if self.input_bits is None:
            return 2
        return self.input_bits + max(1, math.ceil(math.log2(n)))

    @property
    def target_bits(self) -> int:
        return self.security_bits + self.max_attempts_log2

    def analyse(self, n: int, k: int, t: int) -> SecurityAnalysis:
        return analyse(self, n, k, t)

    def derive(self, n: int, *, complete: bool) -> tuple[int, int]:
        return derive_parameters(self, n, complete=complete)

    def check(self, n: int, k: int, t: int, modulus_bits: int) -> SecurityAnalysis:
        """The analysis of (n, k, t), or :class:`PolicyViolation` if it is weaker than
        this policy accepts."""
        if not isinstance(n, int) or n < 3:
            raise PolicyViolation(f"roster of {n} clients: a sum of fewer than 3 reveals inputs")
        if not 1 <= k <= n - 1 or not 1 <= t <= k:
            raise PolicyViolation(f"degree {k} and threshold {t} are impossible with {n} clients")
        if modulus_bits < self.min_modulus_bits(n):
            raise PolicyViolation(
                f"modulus of {modulus_bits} bits is below the {self.min_modulus_bits(n)} this "
                f"client needs for {n} inputs of {self.input_bits} bits"
            )
        if self.honest_in_sum(n) < 1:
            raise PolicyViolation(
                f"with {self.corrupt(n)} colluders among {n}, the minimum of "
                f"{self.dp_survivors(n)} survivors leaves no honest input"
            )
        a = analyse(self, n, k, t)
        if a.complete:
            t_min = (n + a.corrupt) // 2 + 1
            if t < t_min:
                raise PolicyViolation(
                    f"threshold {t} with {n} clients and {a.corrupt} colluders: this client "
                    f"requires t >= {t_min} (Bonawitz et al.: t > (n + c)/2)"
                )
        if a.log2_security > -self.target_bits:
            raise PolicyViolation(
                f"k = {k}, t = {t} for {n} clients: the server learns a sum of fewer than "
                f"{a.honest_in_sum} honest inputs with probability 2^{a.log2_security:.1f} "
                f"per attempt; this client requires <= 2^-{self.target_bits}"
            )
        return a


def _log_binom_sf(m: np.ndarray, p: float, at_least: np.ndarray) -> np.ndarray:
    """ln P[Bin(m_i, p) >= a_i], elementwise (log space, exact to float precision)."""
    top = int(m.max()) if m.size else 0
    i = np.arange(0, top + 1, dtype=np.float64)[None, :]
    mm = m[:, None].astype(np.float64)
    ok = (i <= mm) & (i >= at_least[:, None])
    ii = np.where(i <= mm, i, 0.0)
    lp = math.log(p) if p > 0 else -np.inf
    lq = math.log1p(-p) if p < 1 else -np.inf
    with np.errstate(invalid="ignore"):
        terms = _lcomb(mm, ii) + ii * lp + (mm - ii) * lq
    terms = np.where(ok, terms, -np.inf)
    out = np.asarray(logsumexp(terms, axis=1))
    return np.where(at_least <= 0, 0.0, out)


@functools.lru_cache(maxsize=4096)
def _quorum_samples(policy: ClientPolicy, n: int, k: int, t: int) -> tuple[int, float]:
    """Certificate entries to verify, and log2 of the agreement failure probability.

    A certificate for a status vector with at most (n + c)/2 valid signatures has a
    fraction of at least phi = 1 - (n + c)/(2Q) invalid entries among its >= Q, so a
    client that checks s random entries accepts it with probability at most
    rho = (1 - phi)^s, on its own coins. A minority view gains the server nothing
    unless, for some honest owner w, at least t - c_w of w's honest holders act on
    it (that is what it takes to rebuild a second secret of w), so

        P <= n * sum_j P[c_w = j] * P[Bin(k - j, rho) >= t - j].
    """
    c = policy.corrupt(n)
    q = policy.required_survivors(n)
    phi = 1.0 - (n + c) / (2.0 * q)
    if phi <= 0.0:
        return q, -math.inf  # verify every entry: no sampling error at all
    j = np.arange(0, min(k, c) + 1, dtype=np.float64)
    ok = k - j <= n - 1 - c
    jj = np.where(ok, j, 0.0)
    log_pmf = np.where(ok, _lcomb(c, jj) + _lcomb(n - 1 - c, k - jj) - _lcomb(n - 1, k), -np.inf)
    target = -(policy.target_bits + 1) * _LN2
    for s in range(1, q):
        rho = (1.0 - phi) ** s
        lsf = _log_binom_sf((k - j).astype(np.int64), rho, (t - j).astype(np.int64))
        val = math.log(n) + float(logsumexp(log_pmf + lsf))
        if val <= target:
            return s, val / _LN2
    return q, -math.inf


@functools.lru_cache(maxsize=4096)
def _graph_log2(n: int, k: int, t: int, c: int, s_star: int) -> float:
    if k >= n - 1:
        # Complete graph: a revealed sum holds every live honest client, and the client
        # requires |U3| >= required_survivors >= s* + c; nothing smaller can be unmasked.
        return -math.inf
    s = np.arange(1, max(1, s_star), dtype=np.float64)
    if s.size == 0:
        return -math.inf
    lp = _log_hyp_sf(n - 1, s - 1 + c, k, t)
    terms = _lcomb(n - c, s) + s * lp
    return float(logsumexp(terms)) / _LN2


@functools.lru_cache(maxsize=4096)
def _correctness_log2(n: int, k: int, t: int, missing: int) -> float:
    # A client needs t responsive holders among its k draws (its own share is not one).
    lp = _log_hyp_sf(n - 1, np.array([missing]), k, k - t + 1)[0]
    return (math.log(n) + float(lp)) / _LN2


def _largest_correct_t(n: int, k: int, missing: int, rho: int) -> int | None:
    """Largest t with n * P[more than k - t of k draws missing] <= 2^rho, or None."""
    a = np.arange(0, k + 1)
    # ln P[X >= a] for every a at once: reverse cumulative logsumexp of the pmf.
    j = a.astype(np.float64)
    ok = (j <= missing) & (k - j <= n - 1 - missing)
    jj = np.where(ok, j, 0.0)
    logpmf = np.where(
        ok,
        _lcomb(missing, jj) + _lcomb(n - 1 - missing, k - jj) - _lcomb(n - 1, k),
        -np.inf,
    )
    sf = np.logaddexp.accumulate(logpmf[::-1])[::-1]  # sf[a] = ln P[X >= a]
    bound = rho * _LN2 - math.log(n)
    good = np.nonzero(sf <= bound)[0]
    if good.size == 0:
        return None
    t = k - int(good[0]) + 1  # need X <= k - t, i.e. failure is X >= k - t + 1
    return t if t >= 1 else None


def analyse(policy: ClientPolicy, n: int, k: int, t: int) -> SecurityAnalysis:
    c = policy.corrupt(n)
    samples, log2_quorum = _quorum_samples(policy, n, k, t)
    return SecurityAnalysis(
        n=n,
        k=k,
        t=t,
        corrupt=c,
        honest_in_sum=policy.honest_in_sum(n),
        required_survivors=policy.required_survivors(n),
        samples=samples,
        log2_graph=_graph_log2(n, k, t, c, policy.honest_in_sum(n)),
        log2_quorum=log2_quorum,
        log2_correctness=_correctness_log2(n, k, t, policy.missing(n)),
    )


@functools.lru_cache(maxsize=1024)
def _derive_cached(policy: ClientPolicy, n: int, complete: bool) -> tuple[int, int]:
    c = policy.corrupt(n)
    missing = policy.missing(n)
    if n < 3:
        raise ConfigError("need at least 3 clients")
    if policy.honest_in_sum(n) < 1:
        raise ConfigError(
            f"min survivors {policy.dp_survivors(n)} do not exceed the {c} colluders of {n}"
        )

    def complete_params() -> tuple[int, int]:
        t = (n + c) // 2 + 1
        if t > n - 1 - missing:
            raise ConfigError(
                f"no threshold tolerates dropout fraction {policy.max_dropout_fraction} and "
                f"corrupt fraction {policy.max_corrupt_fraction} with {n} clients "
                "(need (n + c)/2 < t <= n - 1 - dropped)"
            )
        return n - 1, t

    if complete:
        return complete_params()
    s_star = policy.honest_in_sum(n)
    target = -(policy.target_bits + 1)
    rho = -policy.correctness_bits
    for k in range(2, n - 1):
        # Correctness pins the largest usable t (k draws, t needed among them).
        t_best = _largest_correct_t(n, k, missing, rho)
        if t_best is None:
            continue
        if _graph_log2(n, k, t_best, c, s_star) <= target:
            return k, t_best
    return complete_params()


def derive_parameters(policy: ClientPolicy, n: int, *, complete: bool) -> tuple[int, int]:
    """The smallest degree k (and the largest threshold t it can afford) that meets
    ``policy`` for ``n`` clients; the complete graph when no smaller k does or when
    ``complete`` (SecAgg) is asked for."""
    return _derive_cached(policy, n, complete)
