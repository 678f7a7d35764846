"""`teacher:`: the model that answers, one of four backends (openai, vllm, vllm-offline, local), its
request parameters and retries."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distilforge.schemas.base import EMBEDDED_STUDENT, KeyConflict, RenamedKey, Strict


class TeacherParams(Strict):
    temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="sampling temperature (reasoning models accept only 1)")
    top_p: float | None = Field(
        default=None, gt=0.0, le=1.0, description="nucleus sampling; unset: the server's default")
    max_tokens: int = Field(
        default=512, ge=1, description="tokens per answer; also what is reserved per sample for budget and "
                                       "rate limits")
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="reasoning models: sent instead of max_tokens; reasoning tokens count"
    )
    seed: int | None = Field(
        default=None, description="sampling seed, for servers that honour it (local: torch.manual_seed)")
    stop: list[str] | None = Field(default=None, description="stop sequences (openai, vllm, vllm-offline)")
    presence_penalty: float | None = Field(default=None, description="openai, vllm, vllm-offline: passed through")
    frequency_penalty: float | None = Field(default=None, description="openai, vllm, vllm-offline: passed through")
    response_format: dict[str, Any] | None = Field(default=None, description="OpenAI/vLLM structured output")
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = Field(
        default=None, description="reasoning models (o-series, gpt-5, ...): passed through as reasoning_effort")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="passed verbatim to the server")


class RetryConfig(Strict):
    max_attempts: int = Field(default=6, ge=1, description="tries per request, first one included")
    max_wait_s: float = Field(default=120.0, gt=0, description="stop retrying a request once this long has passed")
    second_pass_after_s: float = Field(
        default=5.0, ge=0, description="requests that still failed get one more try at the end, after this pause")


class TeacherConfig(Strict):
    backend: Literal["openai", "vllm", "vllm-offline", "local"] = Field(
        default="local", description="openai: an OpenAI(-compatible) API; vllm: a vLLM server (needs "
                                     "base_url); vllm-offline: vLLM in this process; local: transformers in "
                                     "this process (CPU or GPU)")
    model: str = Field(
        default=EMBEDDED_STUDENT, description="the served model id (openai, vllm), or a local folder, .gguf "
                                              "file, Hub id or alias (local, vllm-offline)")
    base_url: str | list[str] | None = Field(
        default=None, description="openai, vllm: one endpoint, or several replicas; openai: default "
                                  "api.openai.com")
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY", description="openai, vllm: name of the env var holding the key; null for "
                                              "keyless servers")
    max_concurrency: int = Field(
        default=16, ge=1, description="requests in flight at once per rank (the Sampler's slots; every "
                                      "backend)")
    timeout: float = Field(
        default=120.0, gt=0, description="openai, vllm: seconds per request; with stream: the longest silence"
                                         " between chunks")
    stream: bool = Field(
        default=False, description="openai, vllm: stream answers (server-sent events, usage in the last "
                                   "chunk)")
    opens_thinking: bool = Field(default=False, description="openai, vllm, vllm-offline: the served chat template "
                                                            "opens <think> itself (R1-distill without a reasoning "
                                                            "parser): an answer with no </think> is a thinking that "
                                                            "never finished")
    min_tokens_per_second: float = Field(
        default=10.0, gt=0, description="openai, vllm: the slowest generation a request is given time for: "
                                        "with max_completion_tokens, a request not streamed (or a hidden trace) may take max(timeout, "
                                        "max_completion_tokens / this) seconds")
    retry: RetryConfig = Field(
        default=RetryConfig(), description="retries of a failed request (every backend, through the Sampler)")
    supports_n: bool = Field(
        default=True, description="send n samples in one request (false: n requests of one sample)")
    rpm: float | None = Field(
        default=None, gt=0, description="openai, vllm: requests per minute this endpoint allows (shared "
                                        "across ranks)")
    tpm: float | None = Field(
        default=None, gt=0, description="openai, vllm: tokens per minute (prompt + completion), shared across"
                                        " ranks")
    cache: bool = Field(default=True, description="reuse answers from the response cache shared across run "
                                                  "folders (openai/vllm backends); false: always ask the teacher")
    batch_api: bool = Field(
        default=False, description="openai: use the OpenAI Batch API (cheaper, asynchronous; local executor, "
                                   "not self/evol-instruct)")
    batch_poll_seconds: float = Field(
        default=30.0, gt=0, description="batch_api: first poll interval in seconds; backs off to 10x")
    batch_max_requests: int = Field(
        default=50_000, ge=1, le=50_000, description="batch_api: rows per batch (API limit 50,000)")
    batch_rounds: int = Field(
        default=3, ge=1, description="batch_api: batches resubmitted for failed rows within one run")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm-offline: vllm.LLM(**engine_args)")
    batch_size: int = Field(default=8, ge=1, description="local: sequences per generate() call")
    device: str = Field(
        default="auto", description="local backend (and the student's eval): a torch device; auto: cuda, else"
                                    " mps, else cpu")
    params: TeacherParams = Field(
        default=TeacherParams(), description="sampling parameters of every request (the local backend reads "
                                             "only temperature, top_p, max_tokens and seed)")

    @property
    def base_urls(self) -> list[str]:
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, value: Any) -> Any:
        # `batch` also means judge.batch and adaptive.batch; the old key keeps working, with a hint.
        if isinstance(value, dict) and "batch" in value:
            value = dict(value)
            value.setdefault("batch_api", value.pop("batch"))
            warnings.warn("teacher.batch is now teacher.batch_api (the old key still works)", RenamedKey, stacklevel=2)
        return value

    def completion_budget(self) -> int:
        """Tokens one sample may produce: what we reserve for rate limits and budget."""
        return self.params.max_completion_tokens or self.params.max_tokens

    def request_timeout(self) -> float:
        """Seconds an answer may take. With max_completion_tokens (reasoning models) never less than the
        longest generation at the floor rate: a long thinking must not time out for being long."""
        if self.params.max_completion_tokens is None:
            return self.timeout
        return max(self.timeout, self.params.max_completion_tokens / self.min_tokens_per_second)

    @model_validator(mode="after")
    def _hidden_trace_params(self) -> TeacherConfig:
        from distilforge.schemas.hidden_trace import HIDDEN_REFUSES, hidden_trace_model

        if self.backend != "openai" or not hidden_trace_model(self.model):
            return self
        given = self.params.model_fields_set
        refused = [k for k in HIDDEN_REFUSES if k in given and not (k == "temperature" and self.params.temperature == 1)]
        if refused:
            names = ", ".join(f"params.{k}" for k in refused)
            raise KeyConflict(f"params.{refused[0]}", f"{self.model} is a reasoning model and refuses {names}: remove "
                             f"{'it' if len(refused) == 1 else 'them'} (it takes params.reasoning_effort and "
                             "params.max_completion_tokens)")
        return self

    @field_validator("api_key_env")
    @classmethod
    def _looks_like_env_name(cls, v: str | None) -> str | None:
        # A pasted secret here would end up in run files; only a variable *name* is accepted.
        if v is not None and (v.startswith("sk-") or not v.replace("_", "").isalnum()):
            raise ValueError("must be the name of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return v
