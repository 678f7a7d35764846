"""`output:`: where the run folder goes and how the dataset is published."""

from __future__ import annotations

from pydantic import Field

from distilforge.schemas.base import Strict


class OutputConfig(Strict):
    dir: str | None = Field(
        default=None, description="the run folder (default: runs/NAME; --output wins; a service job may not "
                                  "set it)")
    hub_repo: str | None = Field(default=None, description="ORG/NAME: publish the dataset there at the end")
    private: bool = Field(default=True, description="publish the Hub dataset as private")
    validation_fraction: float = Field(default=0.05, ge=0, lt=1, description="held out, seeded; none under 20 rows")
    license: str = Field(default="other", description="the dataset card's license (respect the seeds' and teacher's)")
