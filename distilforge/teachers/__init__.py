"""Teachers behind one async interface: an OpenAI-compatible API or an in-process model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distilforge.schemas import TeacherConfig
from distilforge.teachers.base import AttemptFailed, Teacher, TeacherError


def make_teacher(config: TeacherConfig, share: float = 1.0) -> Teacher:
    """`share`: the part of the endpoint's rate limits this process may use (1/N of N ranks)."""
    if config.backend in ("openai", "vllm"):
        from distilforge.teachers.openai_api import OpenAITeacher

        return OpenAITeacher(config, share=share)
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
    raise TeacherError(f"teacher.backend: unknown backend {config.backend!r}")


def rank_resources(config: TeacherConfig) -> dict[str, int]:
    """What one rank of this teacher needs on a cluster node (a Ray actor's options): a CPU, and for
    an in-process vLLM engine its GPUs."""
    if config.backend == "vllm-offline":
        from distilforge.teachers.vllm_offline import rank_resources as engine_resources

        return engine_resources(config)
    return {"num_cpus": 1}


def teacher_identity(config: TeacherConfig) -> dict[str, Any]:
    """What makes two requests the same logical request: not the URL or replica, not concurrency."""
    backend = "openai" if config.backend == "vllm" else config.backend  # a vLLM server speaks the same API
    return {"backend": backend, "model": config.model, "params": config.params.model_dump(mode="json")}


def display_model(config: TeacherConfig) -> str:
    """The teacher's name for datasets, cards and reports: an alias or a served id, never a local path."""
    from distilforge.models import EMBEDDED

    if config.backend in ("local", "vllm-offline") and config.model not in EMBEDDED:
        path = Path(config.model)
        if path.exists() or config.model.startswith((".", "/", "~")):
            return path.name
    return config.model


__all__ = ["AttemptFailed", "Teacher", "TeacherError", "display_model", "make_teacher", "rank_resources", "teacher_identity"]
