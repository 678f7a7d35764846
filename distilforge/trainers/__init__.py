"""Student training with TRL: SFT on the teacher's answers (black-box), or GKD on its logits (white-box)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilforge.schemas import JobConfig


def train_student(config: JobConfig, run_dir: Path, should_stop: Callable[[], bool] | None = None,
                  resume: bool = False) -> dict[str, Any]:
    """Train by `train.method` (lora, full, qlora: SFT; gkd: generalized KD); writes RUN_DIR/student."""
    if config.train.method == "gkd":
        from distilforge.trainers.gkd import train_student_gkd

        return train_student_gkd(config, run_dir, should_stop, resume)
    from distilforge.trainers.sft import train_student as train_sft

    return train_sft(config, run_dir, should_stop, resume)


__all__ = ["train_student"]
