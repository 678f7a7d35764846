"""Every pydantic model at the boundaries: the job config (one module per section, `config` for `JobConfig`
and its YAML loader), seeds and records, run.json's report, eval results, the service's bodies. Imports no
other room. The job config's models are re-exported here: `from distilforge.schemas import JobConfig`."""

from distilforge.schemas.base import EMBEDDED_STUDENT, ConfigError, KeyConflict, RenamedKey, Strict
from distilforge.schemas.budget import BudgetConfig, Prices
from distilforge.schemas.config import JobConfig, load_config, parse_override
from distilforge.schemas.evaluation import EvalConfig, EvalFile
from distilforge.schemas.executor import ExecutorConfig
from distilforge.schemas.filters import (
    ConsistencyFilterSpec,
    DecontaminateSpec,
    EmbeddingDedupSpec,
    FilterSpec,
    JudgeFilterSpec,
    LengthFilterSpec,
    MinhashFilterSpec,
    ThinkingConfig,
)
from distilforge.schemas.generation import (
    DEFAULT_TEMPLATES,
    AdaptiveConfig,
    GenerationConfig,
    IclConfig,
    Mode,
)
from distilforge.schemas.loop import LoopConfig
from distilforge.schemas.output import OutputConfig
from distilforge.schemas.seeds import SeedFields, SeedsConfig
from distilforge.schemas.teacher import RetryConfig, TeacherConfig, TeacherParams
from distilforge.schemas.train import GKDSettings, LoraConfig, TrainConfig

__all__ = [
    "DEFAULT_TEMPLATES", "EMBEDDED_STUDENT", "AdaptiveConfig", "BudgetConfig", "ConfigError",
    "ConsistencyFilterSpec", "DecontaminateSpec", "EmbeddingDedupSpec", "EvalConfig", "EvalFile",
    "ExecutorConfig", "FilterSpec", "GKDSettings", "GenerationConfig", "IclConfig", "JobConfig",
    "JudgeFilterSpec", "KeyConflict", "LengthFilterSpec", "LoopConfig", "LoraConfig", "MinhashFilterSpec",
    "Mode", "OutputConfig", "Prices", "RenamedKey", "RetryConfig", "SeedFields", "SeedsConfig", "Strict",
    "TeacherConfig", "TeacherParams", "ThinkingConfig", "TrainConfig", "load_config", "parse_override",
]
