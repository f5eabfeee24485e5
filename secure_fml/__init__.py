"""secure-fml: privacy-hardened federated meta-learning.

Quick start::

    from secure_fml import Simulation
    from secure_fml.demo import default_run_config
    result = Simulation(default_run_config()).run()   # embedded few-shot task, FedMeta(MAML)
    print(result.summary["test"]["personalized_metrics"], result.summary["baselines"])

    site = personalize("runs/run", my_site_data, steps=5)   # a new site adapts the model

Layers (one-way): ``privacy`` <- ``aggregation`` <- ``secure_fml`` <- ``audits``.
"""

from privacy import SamplingMode
from secure_fml.adaptation import Personalized, load_for_adaptation, load_site_csv, personalize
from secure_fml.algorithms import (
    Algorithm,
    AlgorithmConfig,
    AlgorithmName,
    ClientUpdate,
    LocalOptimizer,
    UpdateKind,
    make_algorithm,
)
from secure_fml.config import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PrivacyConfig,
    RunConfig,
    SecureAggregationConfig,
    ServerConfig,
    config_from_dict,
    load_config,
    with_overrides,
)
from secure_fml.engine import RoundEngine, RoundPlan, plan_round
from secure_fml.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PrivacyBudgetExhausted,
    SecureFMLError,
)
from secure_fml.evaluation import EvalResult, evaluate
from secure_fml.messages import AggregationProtocol
from secure_fml.metrics import classification_metrics
from secure_fml.models import MLP, CharLSTM, FemnistCNN
from secure_fml.pipeline import ClientPipeline
from secure_fml.rounds import ServerOptimizerKind
from secure_fml.simulation import RunResult, Simulation

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "AggregationProtocol",
    "Algorithm",
    "AlgorithmConfig",
    "AlgorithmName",
    "CharLSTM",
    "CheckpointError",
    "ClientPipeline",
    "ClientUpdate",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataError",
    "EvalConfig",
    "EvalResult",
    "FemnistCNN",
    "LocalOptimizer",
    "ModelConfig",
    "Personalized",
    "PrivacyBudgetExhausted",
    "PrivacyConfig",
    "RoundEngine",
    "RoundPlan",
    "RunConfig",
    "RunResult",
    "SamplingMode",
    "SecureAggregationConfig",
    "SecureFMLError",
    "ServerConfig",
    "ServerOptimizerKind",
    "Simulation",
    "UpdateKind",
    "classification_metrics",
    "config_from_dict",
    "evaluate",
    "load_config",
    "load_for_adaptation",
    "load_site_csv",
    "make_algorithm",
    "personalize",
    "plan_round",
    "with_overrides",
]
