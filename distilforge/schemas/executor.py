"""`executor:`: where the ranks run (this process or a Ray cluster)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilforge.schemas.base import Strict


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = Field(
        default="local", description="local: ranks in this process; ray: one Ray actor per rank")
    workers: int = Field(default=1, ge=1, description="ranks: seeds are sharded by a hash of their id")
    address: str | None = Field(
        default=None, description="a Ray cluster (ray://host:10001 or auto); none: a local Ray")
