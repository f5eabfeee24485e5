"""Attack-audit suite. May import every package; nothing imports it.

Each audit is a small object with a frozen config (dp_auditorium's shape:
a mechanism under test, a neighbouring-dataset generator, a property tester;
see :mod:`audits._mechanism`):
:class:`CanaryEpsilonAudit` (Andrew et al. 2024), :class:`OneRunAudit`
(Steinke et al. 2023), :class:`MembershipInferenceAudit` (loss threshold,
LiRA), :class:`GradientInversionAudit` and :class:`MaliciousServerAudit`.
:class:`AuditRunner` runs them on an :class:`AuditTarget` and returns
:class:`AuditResult` records; :func:`write_report` renders ``audit.json`` and
``audit.html``. ``secure-fml audit`` is :mod:`audits.cli`.
"""

from audits._canary import (
    CanaryClient,
    CanaryConfig,
    CanaryEpsilonAudit,
    EngineMechanism,
    OneRunAudit,
)
from audits._core import (
    Audit,
    AuditExit,
    AuditResult,
    AuditRunner,
    AuditTarget,
    Control,
    Verdict,
    bound_verdict,
    exit_code,
)
from audits._inversion import GradientInversionAudit, InversionConfig
from audits._malicious import MaliciousServerAudit, MaliciousServerConfig
from audits._mechanism import (
    CanaryGame,
    CanaryPlan,
    GaussianSumMechanism,
    MechanismRun,
    MechanismUnderTest,
)
from audits._membership import MembershipConfig, MembershipInferenceAudit
from audits._report import render_html, write_report
from audits._stats import (
    GaussianTradeoff,
    ProfileTradeoff,
    epsilon_two_gaussians,
    fdp_gaussian_epsilon_lower_bound,
    fdp_one_run_rejects,
    gdp_epsilon,
    one_run_bound_over_thresholds,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    threshold_epsilon_lower_bound,
)
from audits._suites import Suite, build_suite

__all__ = [
    "Audit",
    "AuditExit",
    "AuditResult",
    "AuditRunner",
    "AuditTarget",
    "CanaryClient",
    "CanaryConfig",
    "CanaryEpsilonAudit",
    "CanaryGame",
    "CanaryPlan",
    "Control",
    "EngineMechanism",
    "GaussianSumMechanism",
    "GaussianTradeoff",
    "GradientInversionAudit",
    "InversionConfig",
    "MaliciousServerAudit",
    "MaliciousServerConfig",
    "MechanismRun",
    "MechanismUnderTest",
    "MembershipConfig",
    "MembershipInferenceAudit",
    "OneRunAudit",
    "ProfileTradeoff",
    "Suite",
    "Verdict",
    "bound_verdict",
    "build_suite",
    "epsilon_two_gaussians",
    "exit_code",
    "fdp_gaussian_epsilon_lower_bound",
    "fdp_one_run_rejects",
    "gdp_epsilon",
    "one_run_bound_over_thresholds",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "render_html",
    "threshold_epsilon_lower_bound",
    "write_report",
]
