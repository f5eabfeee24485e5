"""Plain-text rendering of privacy plans and projections, for the CLI and benchmarks.

Rendering text for people belongs here, not in the accountants
(:mod:`privacy` returns value objects; this module turns them into lines).
"""

from __future__ import annotations

from privacy import PrivacyPlan, PrivacyProjection

__all__ = ["render_plan", "render_projection"]


def render_plan(p: PrivacyPlan) -> str:
    """Plain-text rendering of a :class:`~privacy.PrivacyPlan`."""
    s = p.sampling
    lines = [
        f"accountant:        {p.accountant}",
        f"sampling:          {s.mode.value} (N={s.population}, m={s.clients_per_round:g}, "
        f"rate={s.sample_rate:.6g})",
        f"rounds:            {p.rounds}",
    ]
    if p.participations is not None:
        lines.append(
            f"participations:    {p.participations} per client, composed without "
            "amplification (against the coordinator)"
        )
    lines += [
        f"delta:             {p.delta:.3g}",
        f"target epsilon:    {p.target_epsilon:g}",
        f"noise multiplier:  {p.noise_multiplier:.4f}",
        f"epsilon reached:   {p.epsilon:.4f}",
    ]
    return "\n".join(lines)


def render_projection(p: PrivacyProjection) -> str:
    """Plain-text table of a :class:`~privacy.PrivacyProjection`."""
    head = (
        f"Projection: {p.clients_per_round} clients/round (Poisson, q = m/N), "
        f"{p.rounds} rounds, accountant {p.accountant}, delta = {p.delta_rule}"
    )
    cols = f"{'N':>8} {'q':>10} {'delta':>10} {'sigma@eps=' + format(p.target_epsilon, 'g'):>16}"
    if p.noise_multiplier is not None:
        cols += f" {'eps@sigma=' + format(p.noise_multiplier, '.3g'):>16}"
    lines = [head, cols]
    for r in p.rows:
        sig = (
            "unreachable"
            if r.noise_multiplier_for_target is None
            else (f"{r.noise_multiplier_for_target:.4f}")
        )
        line = f"{r.population:>8} {r.sample_rate:>10.5g} {r.delta:>10.3g} {sig:>16}"
        if p.noise_multiplier is not None and r.epsilon_at_noise_multiplier is not None:
            line += f" {r.epsilon_at_noise_multiplier:>16.4f}"
        lines.append(line)
    return "\n".join(lines)
