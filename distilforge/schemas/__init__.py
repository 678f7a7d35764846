"""pydantic models at the boundaries: the job config and the records that cross stages."""

from distilforge.schemas.config import ConfigError, JobConfig, load_config
from distilforge.schemas.records import Record, Seed

__all__ = ["ConfigError", "JobConfig", "Record", "Seed", "load_config"]
