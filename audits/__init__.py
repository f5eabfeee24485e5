"""Attack-audit suite. May import every package; nothing imports it.

Each audit is a small object with a frozen config (dp_auditorium's shape):
:class:`CanaryEpsilonAudit` (Andrew et al. 2024), :class:`OneRunAudit`
(Steinke et al. 2023), :class:`MembershipInferenceAudit` (loss threshold,
LiRA), :class:`GradientInversionAudit` and :class:`MaliciousServerAudit`.
:class:`AuditRunner` runs them on an :class:`AuditTarget` and returns
:class:`AuditResult` records; :func:`write_report` renders ``audit.json`` and
``audit.html``. ``secure-fml audit`` is :mod:`audits.cli`.
"""

from audits._canary import CanaryClients, CanaryConfig, CanaryEpsilonAudit, OneRunAudit
from audits._core import (
    Audit,
    AuditResult,
    AuditRunner,
    AuditTarget,
    Control,
    Verdict,
    bound_verdict,
)
from audits._inversion import GradientInversionAudit, InversionConfig
from audits._malicious import MaliciousServerAudit, MaliciousServerConfig
from audits._membership import MembershipConfig, MembershipInferenceAudit
from audits._report import render_html, write_report
from audits._stats import (
    epsilon_two_gaussians,
    gdp_epsilon,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    threshold_epsilon_lower_bound,
)
from audits._suites import Suite, build_suite

__all__ = [
    "Audit",
    "AuditResult",
    "AuditRunner",
    "AuditTarget",
    "CanaryClients",
    "CanaryConfig",
    "CanaryEpsilonAudit",
    "Control",
    "GradientInversionAudit",
    "InversionConfig",
    "MaliciousServerAudit",
    "MaliciousServerConfig",
    "MembershipConfig",
    "MembershipInferenceAudit",
    "OneRunAudit",
    "Suite",
    "Verdict",
    "bound_verdict",
    "build_suite",
    "epsilon_two_gaussians",
    "gdp_epsilon",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "render_html",
    "threshold_epsilon_lower_bound",
    "write_report",
]
