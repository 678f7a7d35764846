"""The vLLM engine in-process (`backend: vllm-offline`): GPU batch jobs without a server.

Needs the `vllm` extra (`pip install 'distilforge[vllm]'`) and a GPU; vLLM batches internally, so
`teacher.batch_size` should be large (hundreds).
"""

from __future__ import annotations

from typing import Any

from distilforge.schemas import TeacherConfig
from distilforge.schemas.records import TeacherResponse
from distilforge.teachers.base import TeacherError
from distilforge.teachers.batched import BatchedTeacher
from distilforge.teachers.chat_response import completion_of


def rank_resources(config: TeacherConfig) -> dict[str, int]:
    """One engine per GPU, or per tensor-parallel group: a rank holds that many GPUs."""
    return {"num_cpus": 1, "num_gpus": int(config.engine_args.get("tensor_parallel_size", 1))}


class VllmOfflineTeacher(BatchedTeacher):
    def __init__(self, config: TeacherConfig):
        super().__init__(config.model, config.batch_size)
        self.config = config
        self._llm: Any = None
        self._sampling: Any = None

    def load(self) -> None:
        if self._llm is not None:
            return
        try:
            import vllm
        except ImportError:
            raise TeacherError(
                "teacher.backend vllm-offline needs vLLM on a GPU machine: pip install 'distilforge[vllm]'"
            ) from None
        from distilforge.models import resolve_model

        self._llm = vllm.LLM(model=resolve_model(self.model), **self.config.engine_args)
        self._sampling = vllm.SamplingParams

    def _params(self, n: int) -> Any:
        p = self.config.params
        kwargs: dict[str, Any] = {"n": n, "temperature": p.temperature, "max_tokens": self.config.completion_budget()}
        for key in ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
            value = getattr(p, key)
            if value is not None:
                kwargs[key] = value
        return self._sampling(**kwargs)

    def generate_batch(self, requests: list[tuple[list[dict[str, str]], int]]) -> list[TeacherResponse]:
        self.load()
        outputs = self._llm.chat([m for m, _ in requests], sampling_params=[self._params(n) for _, n in requests],
                                 use_tqdm=False)
        responses = []
        for out in outputs:
            completions = [completion_of({"content": o.text}, o.finish_reason, self.config.opens_thinking)
                           for o in out.outputs]
            prompt_tokens = len(out.prompt_token_ids or []) * len(out.outputs)
            completion_tokens = sum(len(o.token_ids) for o in out.outputs)
            responses.append(TeacherResponse(completions, prompt_tokens, completion_tokens, self.model))
        return responses
