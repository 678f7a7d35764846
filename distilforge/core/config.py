"""The job config: YAML in, a strict pydantic `JobConfig` out.

Strict means an unknown or mistyped key fails, naming the file, the line and the dotted path,
so a typo such as `temprature` never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EMBEDDED_STUDENT = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, line and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SeedFields(Strict):
    question: str = "question"
    answer: str | None = "answer"
    id: str | None = None
    input: str | None = Field(default=None, description="instruction modes: the optional input field")


class SeedsConfig(Strict):
    path: str = Field(description="JSONL/JSON/CSV/Parquet file, a save_to_disk folder, or a Hub dataset id")
    format: Literal["auto", "fields", "openai-chat"] = Field(
        default="auto", description="fields: rows with the fields below; openai-chat: OpenAI chat JSONL "
                                    "(`messages`, optional `metadata`); auto: openai-chat when the first row has "
                                    "a `messages` list and no question field, else fields")
    fields: SeedFields = SeedFields()
    limit: int | None = Field(default=None, ge=1)
    split: str = "train"
    subset: str | None = None
    license: str | None = Field(default=None, description="the seeds' license, for the dataset card")
    on_bad_line: Literal["stop", "skip"] = Field(
        default="stop", description="stop: a bad row stops the run before anything is sent; skip: it is left "
                                    "out and written with its reason to RUN/rejected_seeds.jsonl")


class TeacherParams(Strict):
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="reasoning models: sent instead of max_tokens; reasoning tokens count"
    )
    seed: int | None = None
    stop: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
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
    backend: Literal["openai", "vllm", "vllm-offline", "local"] = "local"
    model: str = EMBEDDED_STUDENT
    base_url: str | list[str] | None = Field(default=None, description="one endpoint, or several replicas")
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY", description="name of the env var holding the key; null for keyless servers"
    )
    max_concurrency: int = Field(default=16, ge=1)
    timeout: float = Field(default=120.0, gt=0, description="seconds; with stream: the longest silence between chunks")
    stream: bool = Field(default=False, description="stream answers (server-sent events, usage in the last chunk)")
    opens_thinking: bool = Field(default=False, description="the served chat template opens <think> itself "
                                                            "(R1-distill without a reasoning parser): an answer "
                                                            "with no </think> is a thinking that never finished")
    min_tokens_per_second: float = Field(
        default=10.0, gt=0, description="the slowest generation a request is given time for: with max_completion_tokens, a "
                                        "request not streamed (or a hidden trace) may take max(timeout, "
                                        "max_completion_tokens / this) seconds")
    retry: RetryConfig = RetryConfig()
    supports_n: bool = Field(default=True, description="send n samples in one request")
    rpm: float | None = Field(default=None, gt=0, description="requests per minute this endpoint allows")
    tpm: float | None = Field(default=None, gt=0, description="tokens per minute (prompt + completion)")
    cache: bool = Field(default=True, description="reuse answers from the response cache shared across run "
                                                  "folders (openai/vllm backends); false: always ask the teacher")
    batch: bool = Field(default=False, description="use the OpenAI Batch API (cheaper, asynchronous)")
    batch_poll_seconds: float = Field(default=30.0, gt=0, description="first poll interval; backs off to 10x")
    batch_max_requests: int = Field(default=50_000, ge=1, le=50_000, description="rows per batch (API limit 50,000)")
    batch_rounds: int = Field(default=3, ge=1, description="batches resubmitted for failed rows within one run")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm-offline: vllm.LLM(**engine_args)")
    batch_size: int = Field(default=8, ge=1, description="local backend: sequences per generate() call")
    device: str = "auto"
    params: TeacherParams = TeacherParams()

    @property
    def base_urls(self) -> list[str]:
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

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
        from distilforge.core.reasoning import HIDDEN_REFUSES, hidden_trace_model

        if self.backend != "openai" or not hidden_trace_model(self.model):
            return self
        given = self.params.model_fields_set
        refused = [k for k in HIDDEN_REFUSES if k in given and not (k == "temperature" and self.params.temperature == 1)]
        if refused:
            names = ", ".join(f"params.{k}" for k in refused)
            raise ValueError(f"{self.model} is a reasoning model and refuses {names}: remove "
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


Mode = Literal["cot", "icl", "instruct", "self-instruct", "evol-instruct"]
DEFAULT_TEMPLATES: dict[str, str] = {
    "cot": "cot.jinja",
    "icl": "icl.jinja",
    "instruct": "instruct.jinja",
    "self-instruct": "self_instruct.jinja",
    "evol-instruct": "evol_instruct.jinja",
}


class IclConfig(Strict):
    pool: str | None = Field(default=None, description="demonstrations file; default: the seeds themselves")
    fields: SeedFields = SeedFields()
    k: int = Field(default=4, ge=1)
    selection: Literal["random", "nearest"] = "random"
    student_format: Literal["zero-shot", "in-context"] = "zero-shot"


class AdaptiveConfig(Strict):
    agree: int = Field(default=3, ge=2, description="stop once this many answers agree (no gold)")
    batch: int | None = Field(default=None, ge=1, description="samples per round (default: agree)")


class GenerationConfig(Strict):
    mode: Mode = "cot"
    samples_per_seed: int = Field(default=1, ge=1)
    answer_type: Literal["auto", "number", "yes_no", "choice", "text"] = "auto"
    template: str | None = Field(default=None, description="Jinja2 file; default: the mode's own")
    system_prompt: str | None = None
    student_prompt: Literal["question", "template"] = Field(
        default="question", description="what the student is trained (and evaluated) on: question: the bare "
                                        "question, as users will ask it; template: the teacher's prompt (the "
                                        "mode's template, without ICL demonstrations unless icl.student_format "
                                        "is in-context)")
    keep: Literal["all", "one", "distinct"] = "all"
    max_per_seed: int | None = Field(default=None, ge=1, description="with keep: distinct")
    self_consistency: bool = Field(default=False, description="no gold: keep rationales that agree with the majority")
    adaptive: AdaptiveConfig | None = None
    icl: IclConfig = IclConfig()
    target_count: int = Field(default=100, ge=1, description="self-instruct: instructions to collect")
    proposals_per_round: int = Field(default=16, ge=1, description="self-instruct: requests per round")
    rouge_threshold: float = Field(default=0.7, gt=0, le=1, description="self-instruct: keep below this ROUGE-L")
    rounds: int = Field(default=1, ge=1, description="evol-instruct: evolution rounds")
    rng_seed: int = 0

    @property
    def template_name(self) -> str:
        return self.template or DEFAULT_TEMPLATES[self.mode]


class Prices(Strict):
    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    cached_input_per_million: float | None = Field(
        default=None, ge=0, description="prompt tokens served from the provider's cache; default: the input price")

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD. Cached tokens are part of prompt_tokens; reasoning tokens are part of completion_tokens."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million
        return ((prompt_tokens - cached) * self.input_per_million + cached * cached_price
                + completion_tokens * self.output_per_million) / 1e6


class BudgetConfig(Strict):
    prices: Prices | None = Field(default=None, description="default: the built-in table for known models")
    max_usd: float | None = Field(default=None, gt=0, description="hard cap on teacher spend for the run folder")
    batch_discount: float = Field(default=0.5, gt=0, le=1, description="price multiplier for Batch API requests")


class LoraConfig(Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class GKDSettings(Strict):
    """White-box distillation (TRL's generalized KD) from a local teacher that shares the student's tokenizer."""

    lmbda: float = Field(default=0.5, ge=0, le=1, description="share of steps on the student's own samples (on-policy)")
    beta: float = Field(default=0.5, ge=0, le=1, description="generalized JSD: 0 forward KL, 1 reverse KL")
    temperature: float = Field(default=0.9, gt=0, description="sampling temperature of on-policy generations")
    max_new_tokens: int = Field(default=128, ge=1, description="tokens per on-policy generation")
    seq_kd: bool = Field(default=False, description="off-policy steps train on the teacher's own samples")
    teacher: str | None = Field(default=None, description="local model folder, .gguf or alias; default: "
                                                          "teacher.model when teacher.backend is local/vllm-offline")
    lora: bool = Field(default=True, description="train a LoRA adapter (train.lora) on the student; false: all weights")


class TrainConfig(Strict):
    enabled: bool = False
    format: Literal["chat", "step-by-step", "thinking"] = Field(
        default="chat", description="thinking: the answer turn is <think>\\n{reasoning}\\n</think>\\n\\n{answer}")
    alpha: float = Field(default=0.5, gt=0, lt=1, description="step-by-step: share of label-task examples")
    student: str = EMBEDDED_STUDENT
    method: Literal["auto", "lora", "full", "qlora", "gkd"] = Field(
        default="auto", description="auto: full fine-tuning for students under 1B parameters, LoRA above")
    max_steps: int = Field(default=-1, description="-1: run `epochs` instead")
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float | None = Field(default=None, gt=0, description="unset: 1e-4 for full fine-tuning, 2e-4 for (Q)LoRA")
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int | None = Field(default=None, ge=16, description="tokens per example; default: the longest "
                                                                       "kept example, up to max_length_cap")
    max_length_cap: int = Field(default=8192, ge=16, description="the default max_length's ceiling")
    packing: bool = Field(default=False, description="pack examples (needs FlashAttention on a GPU; else padded)")
    gradient_checkpointing: bool = False
    lr_scheduler: str = Field(default="cosine", description="linear | cosine | constant | ...")
    warmup_steps: int = Field(default=0, ge=0)
    seed: int = 0
    lora: LoraConfig = LoraConfig()
    gkd: GKDSettings = GKDSettings()


class EvalFile(Strict):
    path: str
    fields: SeedFields = SeedFields()
    limit: int | None = Field(default=None, ge=1)
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, value: Any) -> Any:
        # `eval.files: [data/test.jsonl]` is as good as `[{path: data/test.jsonl}]`.
        return {"path": value} if isinstance(value, str) else value


class EvalConfig(Strict):
    files: list[EvalFile] = Field(default_factory=list)
    limit: int | None = Field(default=None, ge=1, description="cap per file")
    max_tokens: int = Field(default=256, ge=1)
    batch_size: int = Field(default=16, ge=1)
    include_validation: bool = Field(default=True, description="also score the dataset's validation split")
    teacher: bool = Field(default=False, description="also score the teacher, for the student/teacher ratio")


class OutputConfig(Strict):
    dir: str | None = None
    hub_repo: str | None = Field(default=None, description="ORG/NAME: publish the dataset there at the end")
    private: bool = True
    validation_fraction: float = Field(default=0.05, ge=0, lt=1, description="held out, seeded; none under 20 rows")
    license: str = Field(default="other", description="the dataset card's license (respect the seeds' and teacher's)")


# -- quality filters (the `filters:` list, run in order after the built-in checks) ------------------


class LengthFilterSpec(Strict):
    name: Literal["length"]
    min_words: int = Field(default=5, ge=0, description="shorter is not a rationale")
    max_words: int = Field(default=1500, ge=1, description="longer is rambling")
    max_ratio: float | None = Field(default=None, gt=0, description="rationale words / question words")


class ConsistencyFilterSpec(Strict):
    name: Literal["consistency"]


class JudgeFilterSpec(Strict):
    name: Literal["judge"]
    teacher: TeacherConfig
    prices: Prices | None = Field(default=None, description="the judge model's prices (default: the built-in table)")
    min_score: float = Field(default=4.0, ge=1, le=5)
    rubric: str = Field(default="correctness of each step, relevance to the question, clarity")
    batch: int = Field(default=64, ge=1, description="records judged together (memory bound)")


class MinhashFilterSpec(Strict):
    name: Literal["minhash"]
    threshold: float = Field(default=0.8, gt=0, le=1)
    num_perm: int = Field(default=128, ge=16)
    shingle: int = Field(default=3, ge=1, description="word n-grams")


class EmbeddingDedupSpec(Strict):
    name: Literal["embedding_dedup"]
    threshold: float = Field(default=0.95, gt=0, le=1)


class DecontaminateSpec(Strict):
    name: Literal["decontaminate"]
    eval_sets: list[str] = Field(min_length=1, description="files or Hub dataset ids")
    ngram: int = Field(default=13, ge=3)
    fields: list[str] = Field(default_factory=lambda: ["question"], description="eval-set fields to index")
    split: str = "test"


FilterSpec = Annotated[
    LengthFilterSpec | ConsistencyFilterSpec | JudgeFilterSpec | MinhashFilterSpec | EmbeddingDedupSpec
    | DecontaminateSpec,
    Field(discriminator="name"),
]


class ThinkingConfig(Strict):
    """Checks on a reasoning teacher's trace (records without one pass them). The defaults keep any
    finished, well-formed trace, however short; each check has its own reject reason."""

    min_tokens: int = Field(default=0, ge=0, description="thinking_length: fewer trace tokens are rejected")
    max_tokens: int | None = Field(default=None, ge=1, description="thinking_length: more trace tokens are rejected")
    loop_ngram: int = Field(default=8, ge=2, description="thinking_loop: words per repeated n-gram")
    loop_repeats: int | None = Field(default=10, ge=2, description="thinking_loop: an n-gram seen this often "
                                                                    "(and covering loop_share of the trace); null: off")
    loop_share: float = Field(default=0.3, gt=0, le=1)
    other_script_share: float | None = Field(
        default=0.3, gt=0, le=1, description="language_mixing: letters in a script other than the question's, "
                                             "above this share of the trace's (and 50 letters); null: off")
    answer_supported: bool = Field(default=True, description="answer_not_in_thinking: the trace's last stated "
                                                             "answer must agree with the final one (when both parse)")


class LoopConfig(Strict):
    """Targeted rounds: the student's mistakes on a held-out probe split steer new teacher data."""

    rounds: int = Field(default=0, ge=0, description="rounds after the first pass (0: one pass)")
    probe_fraction: float = Field(default=0.1, gt=0, lt=1, description="seeds held apart to find mistakes")
    per_round_usd: float | None = Field(default=None, gt=0, description="teacher spend allowed per round")
    neighbours: int = Field(default=4, ge=0, description="nearest seeds (MiniLM) of each failed probe question")
    samples: int = Field(default=2, ge=1, description="new samples per targeted seed")
    strategy: Literal["resample", "evolve"] = "resample"
    min_gain: float = Field(default=0.0, ge=-1, le=1, description="stop when probe accuracy gains no more than this "
                            "(below 0: go on through a round that lost accuracy)")
    probe_file: str | None = Field(default=None, description="held-out questions (the seeds' fields) to probe the "
                                   "student with, when it trained on every seed (`improve --probe FILE`)")


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = "local"
    workers: int = Field(default=1, ge=1, description="ranks: seeds are sharded by a hash of their id")
    address: str | None = Field(default=None, description="a Ray cluster (ray://host:10001 or auto); none: a local Ray")


class JobConfig(Strict):
    name: str | None = None
    seeds: SeedsConfig
    teacher: TeacherConfig = TeacherConfig()
    generation: GenerationConfig = GenerationConfig()
    thinking: ThinkingConfig = ThinkingConfig()
    budget: BudgetConfig = BudgetConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    filters: list[FilterSpec] = Field(default_factory=list)
    executor: ExecutorConfig = ExecutorConfig()
    loop: LoopConfig = LoopConfig()

    @model_validator(mode="after")
    def _openai_needs_url_or_key(self) -> JobConfig:
        t = self.teacher
        if t.backend == "openai" and not t.base_url and not t.api_key_env:
            raise ValueError("teacher: the openai backend needs base_url or api_key_env")
        if t.backend == "vllm" and not t.base_url:
            raise ValueError("teacher.base_url: the vllm backend needs the server's URL (or a list of replicas)")
        if t.batch and t.backend != "openai":
            raise ValueError("teacher.batch: the Batch API needs backend: openai")
        if t.batch and self.executor.kind == "ray":
            raise ValueError("teacher.batch: the Batch API runs in one process; use executor.kind local")
        if t.batch and self.generation.mode in ("self-instruct", "evol-instruct"):
            raise ValueError("teacher.batch: self-instruct and evol-instruct decide each round from the last one")
        if self.loop.rounds:
            if not self.train.enabled:
                raise ValueError("loop.rounds: targeted rounds train the student each round; set train.enabled")
            if self.generation.mode not in ("cot", "icl") or self.seeds.fields.answer is None:
                raise ValueError("loop.rounds: the probe split needs questions with gold answers (mode cot or icl)")
        if self.generation.mode == "icl" and self.generation.icl.k >= 1 and self.generation.adaptive:
            raise ValueError("generation.adaptive: works with cot only")
        return self


# ---------------------------------------------------------------------------------------------
# Loading


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. teacher.params.temperature=0.2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from None
    return key.strip(), value


def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on `loc`, so errors point into the file."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == str(part):
                    line, nxt = k.start_mark.line + 1, v
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return line


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the config accepts beside the last part of `loc` (for 'did you mean')."""
    model: Any = JobConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        annotation = fields[part].annotation
        args = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else (
            args[0] if len(args) == 1 else None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.6) if loc else []
    return f" (did you mean '{close[0]}'?)" if close else ""


def format_validation_error(exc: ValidationError, source: str, root: yaml.Node | None,
                            overrides: dict[str, str] | None = None) -> str:
    """One line per problem, blamed on the file's line, or on the `--set` that put the value there."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        msg = "unknown key" + _did_you_mean(loc) if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "missing":
            msg = "required key is missing"
        given = next((text for key, text in (overrides or {}).items()
                      if dotted == key or dotted.startswith(key + ".")), None)
        if given is not None:
            lines.append(f"--set {given}: {dotted}: {msg}")
            continue
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {dotted}: {msg}")
    return "\n".join(lines)


PACKAGED = "distilforge://"
PACKAGED_ROOT = Path(__file__).resolve().parents[1] / "data"


def packaged_path(uri: str) -> str:
    """`distilforge://demo/seeds.jsonl` -> the file shipped in the package, so a config works anywhere."""
    rest = uri[len(PACKAGED):].strip("/")
    target = (PACKAGED_ROOT / rest).resolve()
    if PACKAGED_ROOT not in target.parents or not target.is_file():
        known = ", ".join(f"{PACKAGED}demo/{p.name}" for p in sorted((PACKAGED_ROOT / "demo").glob("*.jsonl")))
        raise ConfigError(f"{uri}: no such packaged file (known: {known})")
    return str(target)


def resolve_paths(config: JobConfig, base: Path) -> JobConfig:
    """Relative file paths in a config are relative to the config file, not the shell's cwd;
    `distilforge://demo/...` names a file shipped with distilforge."""

    def fix(p: str) -> str:
        if p.startswith(PACKAGED):
            return packaged_path(p)
        candidate = base / p
        return str(candidate) if not Path(p).is_absolute() and candidate.exists() else p

    config.seeds.path = fix(config.seeds.path)
    for f in config.eval.files:
        f.path = fix(f.path)
    if config.generation.icl.pool:
        config.generation.icl.pool = fix(config.generation.icl.pool)
    for spec in config.filters:
        if spec.name == "decontaminate":
            spec.eval_sets = [fix(s) for s in spec.eval_sets]
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (seeds:, teacher:, ...)")
    given: dict[str, str] = {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(data, key, value)
        given[key] = item
    try:
        config = JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path), root, given)) from None
    return resolve_paths(config, path.parent)
