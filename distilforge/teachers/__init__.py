"""Teachers behind one async interface: an OpenAI-compatible API or an in-process model."""

from __future__ import annotations

from distilforge.core.config import TeacherConfig
from distilforge.teachers.base import Completion, Teacher, TeacherError, TeacherResponse, TeacherStats


def make_teacher(config: TeacherConfig) -> Teacher:
    if config.backend in ("openai", "vllm"):
        from distilforge.teachers.openai_api import OpenAITeacher

        return OpenAITeacher(config)
    if config.backend == "local":
        # Imported here so an API run never pays for torch/transformers at start-up.
        from distilforge.teachers.local import LocalTeacher

        p = config.params
        return LocalTeacher(
            config.model,
            temperature=p.temperature,
            top_p=p.top_p,
            max_tokens=p.max_tokens,
            seed=p.seed,
            batch_size=config.batch_size,
            device=config.device,
        )
    if config.backend == "vllm-offline":
        from distilforge.teachers.vllm_offline import VllmOfflineTeacher

        return VllmOfflineTeacher(config)
    raise ValueError(f"teacher.backend: unknown backend {config.backend!r}")


__all__ = ["Completion", "Teacher", "TeacherError", "TeacherResponse", "TeacherStats", "make_teacher"]
