"""A stand-in for vLLM's offline engine, for tests on machines without a GPU.

It answers every chat with a fixed text and records, per engine, the GPU it was given
(CUDA_VISIBLE_DEVICES) and the size of every batch, in FAKE_VLLM_LOG (a folder).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    max_tokens: int = 16
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass
class _Completion:
    text: str
    finish_reason: str
    token_ids: list[int] = field(default_factory=lambda: [1, 2, 3])


@dataclass
class _Output:
    outputs: list[_Completion]
    prompt_token_ids: list[int]


class LLM:
    def __init__(self, model: str, **engine_args: object):
        self.model = model
        self.engine_args = engine_args
        self.log = os.path.join(os.environ["FAKE_VLLM_LOG"], f"engine-{uuid.uuid4().hex[:8]}.json")
        self.record = {"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(), "batches": [],
                       "engine_args": {k: v for k, v in engine_args.items() if isinstance(v, (int, str, float))}}
        self._save()

    def _save(self) -> None:
        with open(self.log, "w") as fh:
            json.dump(self.record, fh)

    def chat(self, messages: list, sampling_params: list, use_tqdm: bool = False) -> list[_Output]:
        self.record["batches"].append(sum(p.n for p in sampling_params))
        self._save()
        return [_Output([_Completion("Counting up.\nThe answer is 1.", "stop") for _ in range(p.n)], [1] * 8)
                for p in sampling_params]
