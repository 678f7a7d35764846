"""A job submitted over the API is untrusted input: check every path, URL, model, key variable,
pass-through dictionary, limit and price, against the settings as they are *now*.

The same check runs when a job is submitted, when a schedule fires and when a worker claims the job
(settings change; files change). Each problem is a (dotted path, message) pair; messages never echo
what was found on the server (no resolved paths, no file contents, no credentials).

- Paths: absolute or relative to the first data root; resolved (symlinks and '..' followed) they must
  lie inside a data root and outside the run folders and the job store. The worker opens them again,
  through the checked path, when it claims the job (`service/inputs.py`).
- Teachers: URLs are parsed and compared by parts (`core/urls.py`), then rewritten to their normalised
  form, so what was checked is what is called. Key variables only from DISTILFORGE_TEACHER_KEY_ENVS.
- Models (local, vllm-offline, the judge, train.student): embedded aliases, folders or GGUF files
  under the data roots, or Hub ids listed in DISTILFORGE_ALLOWED_MODELS.
- Pass-through dictionaries are allowlists: `extra_body` holds sampling and decoding keys only,
  `engine_args` engine sizing keys only (scalars): no trust_remote_code, no paths, no model/n/messages.
- Money: a job never sets `budget.prices`, a judge's `prices` or `budget.batch_discount` (the worker
  writes the server's); a teacher without a server price is refused when any cap applies (see
  `service/prices.py`).
- Limits: every number of the config answers to one server limit (`LIMITS`, a maximum, or a floor for
  `min_*`), in sections that are off too; past it is a 422 naming the key and the limit, never a clamp.
- Files: symlinks inside folders and files with more than one hard link are refused (`link_problem`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from distilforge.core.urls import UrlError, parse_url, url_allowed
from distilforge.schemas import JobConfig, TeacherConfig
from distilforge.service.prices import OPENAI_DEFAULT, run_prices
from distilforge.service.settings import Settings

Problem = tuple[str, str]

# Sampling and decoding keys a job may pass to an OpenAI-compatible server (vLLM's extras included).
EXTRA_BODY_KEYS = frozenset({
    "top_k", "min_p", "typical_p", "repetition_penalty", "length_penalty", "min_tokens", "logit_bias",
    "structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
    "chat_template_kwargs", "skip_special_tokens", "spaces_between_special_tokens",
    "include_stop_str_in_output", "ignore_eos", "stop_token_ids", "bad_words", "reasoning_effort",
})
# chat_template_kwargs reach the server's chat template: scalars only, and none that swap the template.
CHAT_TEMPLATE_DENY = frozenset({"chat_template", "tokenize", "tokenizer", "tools", "documents"})
# vllm.LLM(**engine_args): sizing and numerics only, scalar values, no paths, no remote code.
ENGINE_ARG_KEYS = frozenset({
    "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "pipeline_parallel_size",
    "enforce_eager", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching", "enable_chunked_prefill",
    "kv_cache_dtype", "seed", "swap_space", "quantization", "block_size",
})
_WORD = re.compile(r"^[A-Za-z0-9_.+-]{0,64}$")
# Every number a job can set, by (model class, field): the server limit it answers to (`Limits` field;
# `min_*` is a floor). A number listed in UNLIMITED changes neither cost, reach nor size (or the schema
# bounds it already); tests/test_service_limits.py fails when a new numeric field is in neither table.
LIMITS: dict[tuple[str, str], str] = {
    ("SeedsConfig", "limit"): "seeds", ("EvalFile", "limit"): "seeds", ("EvalConfig", "limit"): "seeds",
    ("TeacherParams", "max_tokens"): "completion_tokens", ("TeacherParams", "max_completion_tokens"): "completion_tokens",
    ("EvalConfig", "max_tokens"): "completion_tokens", ("GKDSettings", "max_new_tokens"): "completion_tokens",
    ("RetryConfig", "max_attempts"): "attempts", ("RetryConfig", "max_wait_s"): "retry_seconds",
    ("RetryConfig", "second_pass_after_s"): "retry_seconds",
    ("TeacherConfig", "max_concurrency"): "concurrency", ("TeacherConfig", "batch_size"): "concurrency",
    ("TeacherConfig", "timeout"): "request_seconds", ("TeacherConfig", "rpm"): "min_rpm",
    ("TeacherConfig", "tpm"): "min_tpm", ("TeacherConfig", "batch_poll_seconds"): "min_poll_seconds",
    ("TeacherConfig", "batch_rounds"): "batch_rounds",
    ("IclConfig", "k"): "icl_k", ("LoopConfig", "neighbours"): "icl_k",
    ("AdaptiveConfig", "agree"): "samples_per_seed", ("AdaptiveConfig", "batch"): "samples_per_seed",
    ("GenerationConfig", "samples_per_seed"): "samples_per_seed", ("GenerationConfig", "max_per_seed"): "samples_per_seed",
    ("LoopConfig", "samples"): "samples_per_seed",
    ("GenerationConfig", "target_count"): "seeds", ("GenerationConfig", "proposals_per_round"): "concurrency",
    ("GenerationConfig", "rounds"): "rounds", ("LoopConfig", "rounds"): "rounds",
    ("LoraConfig", "r"): "lora_rank", ("LoraConfig", "alpha"): "lora_rank",
    ("TrainConfig", "max_steps"): "train_steps", ("TrainConfig", "warmup_steps"): "train_steps",
    ("TrainConfig", "epochs"): "epochs", ("TrainConfig", "batch_size"): "train_batch",
    ("TrainConfig", "gradient_accumulation_steps"): "train_batch", ("TrainConfig", "max_length"): "sequence_tokens",
    ("EvalConfig", "batch_size"): "concurrency", ("JudgeFilterSpec", "batch"): "concurrency",
    ("LengthFilterSpec", "min_words"): "words", ("LengthFilterSpec", "max_words"): "words",
    ("MinhashFilterSpec", "num_perm"): "minhash_perm", ("MinhashFilterSpec", "shingle"): "ngram",
    ("DecontaminateSpec", "ngram"): "ngram", ("ExecutorConfig", "workers"): "ranks",
    ("TeacherConfig", "min_tokens_per_second"): "min_token_rate", ("ThinkingConfig", "loop_ngram"): "ngram",
    ("TrainConfig", "max_length_cap"): "sequence_tokens",
}
# A second limit on the same field: a floor's field still has a maximum.
EXTRA_LIMITS: dict[tuple[str, str], str] = {("TeacherConfig", "batch_poll_seconds"): "retry_seconds"}
UNLIMITED = frozenset({
    ("TeacherParams", "temperature"), ("TeacherParams", "top_p"), ("TeacherParams", "seed"),
    ("TeacherParams", "presence_penalty"), ("TeacherParams", "frequency_penalty"),
    ("TeacherConfig", "batch_max_requests"),  # the schema's own maximum (the Batch API's 50,000)
    ("GenerationConfig", "rouge_threshold"), ("GenerationConfig", "rng_seed"),
    ("Prices", "input_per_million"), ("Prices", "output_per_million"),  # a job never sets prices (422)
    ("BudgetConfig", "max_usd"), ("LoopConfig", "per_round_usd"),  # caps: they lower spend
    ("BudgetConfig", "batch_discount"),  # the server's (DISTILFORGE_BATCH_DISCOUNTS); a job setting it is a 422
    ("LoraConfig", "dropout"), ("GKDSettings", "lmbda"), ("GKDSettings", "beta"), ("GKDSettings", "temperature"),
    ("TrainConfig", "alpha"), ("TrainConfig", "learning_rate"), ("TrainConfig", "seed"),
    ("OutputConfig", "validation_fraction"), ("LengthFilterSpec", "max_ratio"), ("JudgeFilterSpec", "min_score"),
    ("MinhashFilterSpec", "threshold"), ("EmbeddingDedupSpec", "threshold"), ("LoopConfig", "probe_fraction"),
    ("LoopConfig", "min_gain"),
    ("Prices", "cached_input_per_million"),  # a job never sets prices (422)
    # The trace checks' thresholds: a predicate on text already paid for.
    ("ThinkingConfig", "min_tokens"), ("ThinkingConfig", "max_tokens"), ("ThinkingConfig", "loop_repeats"),
    ("ThinkingConfig", "loop_share"), ("ThinkingConfig", "other_script_share"),
    ("DecontaminateSpec", "common_in"), ("DecontaminateSpec", "min_overlap"),  # predicates on the index
})
# Fields that change what a request costs, set by the server at claim: a job that sets one gets a 422.
SERVER_OWNED = {("budget", "batch_discount"): "a Batch API discount is a price: the server's "
                                              "(DISTILFORGE_BATCH_DISCOUNTS), not the job's"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def builtin_templates() -> frozenset[str]:
    from distilforge.prompts import PROMPTS_DIR

    return frozenset(p.name for p in PROMPTS_DIR.glob("*.jinja"))


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolve_input(value: str, settings: Settings) -> Path | None:
    """The real path of a job's path (absolute, or relative to the first data root), or None when it
    resolves outside the data roots or into a run folder or the job store."""
    if value.startswith("~"):
        return None
    raw = Path(value)
    if not raw.is_absolute():
        raw = settings.data_roots[0] / raw
    try:
        resolved = Path(os.path.realpath(raw))  # follows every symlink and '..'
    except (OSError, ValueError):
        return None
    if not _inside(resolved, settings.data_roots) or _inside(resolved, settings.excluded_paths):
        return None
    return resolved


HARD_LINK = ("a file with more than one hard link (it may be a file outside the data roots); copy it instead "
             "of linking it")
MAX_ENTRIES = 100_000
MAX_DEPTH = 8


def link_problem(path: Path) -> str | None:
    """Why a file or folder may not be read as a job's input (None: it may): a symlink anywhere inside it,
    a regular file with more than one hard link, too many entries. Nothing is followed. The worker checks
    again through descriptors when it copies (`service/inputs.py`); this is the early 422."""
    stack, seen = [(path, 0)], 0
    while stack:
        current, depth = stack.pop()
        st = os.lstat(current)
        seen += 1
        if seen > MAX_ENTRIES or depth > MAX_DEPTH:
            return f"more than {MAX_ENTRIES} files or {MAX_DEPTH} levels"
        if stat.S_ISLNK(st.st_mode) and current != path:
            return "a folder input may not contain symlinks"
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return HARD_LINK
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(current) as entries:
                stack += [(Path(e.path), depth + 1) for e in entries]
    return None


def _is_model_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.lower().endswith(".gguf") or not HUB_ID.match(spec)


class Checker:
    def __init__(self, config: JobConfig, settings: Settings, *, owner: str = "default",
                 schedule_cap: float | None = None, count_seeds: bool = True, stored: bool = False):
        self.config, self.settings, self.owner = config, settings, owner
        self.schedule_cap, self.count_seeds = schedule_cap, count_seeds
        self.stored = stored  # a config the service stored (a queued job, a schedule): its server-owned fields are overwritten
        self.limits = settings.limits
        self.problems: list[Problem] = []

    def add(self, loc: str, msg: str) -> None:
        self.problems.append((loc, msg))

    # -- files ---------------------------------------------------------------------------------
    def path(self, loc: str, value: str | None) -> Path | None:
        if value is None:
            return None
        if HUB_ID.match(value) and not (self.settings.data_roots[0] / value).exists():
            self.add(loc, "Hub datasets are not fetched by the service; give a file under the data roots")
            return None
        resolved = resolve_input(value, self.settings)
        if resolved is None:
            self.add(loc, "not a path inside the data roots (DISTILFORGE_DATA_ROOTS)")
            return None
        if not resolved.exists():
            self.add(loc, "no such file under the data roots")
            return None
        if not (resolved.is_file() or resolved.is_dir()):
            self.add(loc, "not a regular file or folder")
            return None
        if resolved.is_file() and resolved.stat().st_nlink > 1:
            self.add(loc, HARD_LINK)
            return None
        return resolved

    def model(self, loc: str, spec: str) -> None:
        from distilforge.models import EMBEDDED

        if spec in EMBEDDED or spec in self.settings.allowed_models:
            return
        if not _is_model_path(spec):
            self.add(loc, "not an embedded model, a folder under the data roots, or a model in "
                          "DISTILFORGE_ALLOWED_MODELS")
            return
        resolved = resolve_input(spec, self.settings)
        if resolved is None:
            self.add(loc, "model path outside the data roots (DISTILFORGE_DATA_ROOTS)")
        elif not (resolved.is_dir() and (resolved / "config.json").is_file()) and not \
                (resolved.is_file() and resolved.suffix.lower() == ".gguf"):
            self.add(loc, "not a model folder (with config.json) or a .gguf file under the data roots")
        else:
            problem = link_problem(resolved)
            if problem:
                self.add(loc, problem)

    # -- teachers ------------------------------------------------------------------------------
    def teacher(self, prefix: str, t: TeacherConfig) -> None:
        self.extra_body(f"{prefix}.params.extra_body", t.params.extra_body)
        if t.backend == "vllm-offline":
            self.engine_args(f"{prefix}.engine_args", t.engine_args)
        elif t.engine_args:
            self.add(f"{prefix}.engine_args", "engine_args are for backend vllm-offline only")
        if t.backend in ("local", "vllm-offline"):
            self.model(f"{prefix}.model", t.model)
            return
        urls = t.base_urls or [OPENAI_DEFAULT]
        for i, url in enumerate(urls):
            where = f"{prefix}.base_url" + (f".{i}" if isinstance(t.base_url, list) else "")
            try:
                allowed = url_allowed(url, self.settings.allowed_teachers)
            except UrlError as exc:
                self.add(where, f"{exc}")
                continue
            if not allowed:
                self.add(where, "not an allowed teacher endpoint (DISTILFORGE_ALLOWED_TEACHERS)")
        if t.api_key_env is not None and t.api_key_env not in self.settings.teacher_key_envs:
            self.add(f"{prefix}.api_key_env", "not an allowed key variable (DISTILFORGE_TEACHER_KEY_ENVS)")

    def extra_body(self, loc: str, body: dict[str, Any]) -> None:
        for key, value in body.items():
            if key not in EXTRA_BODY_KEYS:
                self.add(f"{loc}.{key}", "not an allowed sampling or decoding key for service jobs "
                                         f"(allowed: {', '.join(sorted(EXTRA_BODY_KEYS))})")
            elif key == "chat_template_kwargs":
                if not isinstance(value, dict):
                    self.add(f"{loc}.{key}", "must be a mapping")
                    continue
                for k, v in value.items():
                    if k in CHAT_TEMPLATE_DENY or not isinstance(v, (bool, int, float, str)) or \
                            (isinstance(v, str) and len(v) > 1000):
                        self.add(f"{loc}.{key}.{k}", "chat template variables are short scalars, and may not "
                                                     "replace the template or its tokenizer")

    def engine_args(self, loc: str, args: dict[str, Any]) -> None:
        for key, value in args.items():
            if key not in ENGINE_ARG_KEYS:
                self.add(f"{loc}.{key}", "not an allowed engine argument for service jobs "
                                         f"(allowed: {', '.join(sorted(ENGINE_ARG_KEYS))})")
            elif not isinstance(value, (bool, int, float, str)) or (isinstance(value, str) and not _WORD.match(value)):
                self.add(f"{loc}.{key}", "engine arguments are plain scalars (no paths)")

    # -- numbers -------------------------------------------------------------------------------
    def bound(self, loc: str, value: float, key: str) -> None:
        limit = getattr(self.limits, key)
        shown = f"{int(limit)}" if float(limit).is_integer() else f"{limit:g}"
        env = f"DISTILFORGE_LIMITS_{key.upper()}"
        if key.startswith("min_"):
            if value < limit:
                self.add(loc, f"at least {shown} ({env}): the server's floor")
        elif value > limit:
            self.add(loc, f"at most {shown} ({env})")

    def numbers(self) -> None:
        """Every number of the config against its server limit, sections that are off included."""
        for loc, cls, name, value in config_numbers(self.config):
            for table in (LIMITS, EXTRA_LIMITS):
                key = table.get((cls, name))
                if key is not None:
                    self.bound(loc, value, key)

    def server_owned(self) -> None:
        for (section, name), why in SERVER_OWNED.items():
            if name in getattr(self.config, section).model_fields_set:
                self.add(f"{section}.{name}", why)

    # -- the whole job -------------------------------------------------------------------------
    def run(self) -> list[Problem]:
        c = self.config
        g = c.generation
        if c.output.dir is not None:
            self.add("output.dir", "a service job does not choose where it writes (its run folder is "
                                   "DISTILFORGE_HOME/runs/<job id>)")
        if c.budget.prices is not None:
            self.add("budget.prices", "service jobs are priced by the server (DISTILFORGE_PRICES), not by the job")
        if not self.stored:
            self.server_owned()
        self.numbers()
        if c.executor.address is not None:
            self.add("executor.address", "service jobs run on the service's own workers")
        # files
        seeds = self.path("seeds.path", c.seeds.path)
        if seeds is not None and self.count_seeds:
            self.size(seeds)
        self.path("generation.icl.pool", g.icl.pool)
        for i, f in enumerate(c.eval.files):
            self.path(f"eval.files.{i}.path", f.path)
        template = g.template
        if template is not None and template not in builtin_templates():
            # Built-in templates by their listed names only: a path would let a job read any file.
            self.add("generation.template", f"not one of the built-in templates ({', '.join(sorted(builtin_templates()))})")
        # teachers and models
        self.teacher("teacher", c.teacher)
        for i, spec in enumerate(c.filters):
            if spec.name == "judge":
                self.teacher(f"filters.{i}.teacher", spec.teacher)
                if spec.prices is not None:
                    self.add(f"filters.{i}.prices", "service jobs are priced by the server (DISTILFORGE_PRICES), "
                                                   "not by the job")
            elif spec.name == "decontaminate":
                for j, source in enumerate(spec.eval_sets):
                    self.path(f"filters.{i}.eval_sets.{j}", source)
        self.model("train.student", c.train.student)
        if c.train.gkd.teacher is not None:
            self.model("train.gkd.teacher", c.train.gkd.teacher)
        if c.output.hub_repo and c.output.hub_repo not in self.settings.hub_repos:
            self.add("output.hub_repo", "not an allowed repo (DISTILFORGE_HUB_REPOS)")
        self.prices()
        return self.problems

    def size(self, seeds: Path) -> None:
        """The bounded check at submission: one stat, no row read. The seed count is checked by the worker
        when it copies the file (`seeds_over_limit`), so a 1M-line file costs the API nothing."""
        if seeds.is_file() and seeds.stat().st_size > self.limits.input_bytes:
            self.add("seeds.path", f"larger than {self.limits.input_bytes} bytes (DISTILFORGE_LIMITS_INPUT_BYTES)")

    def prices(self) -> None:
        s = self.settings
        _, unpriced = run_prices(self.config, s.prices)
        capped = (s.monthly_cap_usd is not None or s.owner_caps.get(self.owner) is not None
                  or self.schedule_cap is not None or self.config.budget.max_usd is not None)
        if capped:
            for where in unpriced:
                self.add(f"{where}.model", "no server price for this model or endpoint, and a spending cap "
                                           "applies (DISTILFORGE_PRICES)")


def check_job(config: JobConfig, settings: Settings, *, owner: str = "default", schedule_cap: float | None = None,
              count_seeds: bool = True, stored: bool = False) -> list[Problem]:
    return Checker(config, settings, owner=owner, schedule_cap=schedule_cap, count_seeds=count_seeds,
                   stored=stored).run()


def config_numbers(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, str, str, float]]:
    """(dotted path, model class, field, value) of every number in a config."""
    for name in type(model).model_fields:
        value, loc = getattr(model, name), f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from config_numbers(value, loc + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from config_numbers(item, f"{loc}.{i}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield loc, type(model).__name__, name, value


def seeds_over_limit(path: str, split: str, limit: int) -> bool:
    """More than `limit` seeds in the file at `path`. A JSONL file is counted by its newlines first (memory
    speed); rows are parsed only when that count passes the limit (blank lines are not seeds)."""
    from distilforge.core.seeds import iter_rows

    if path.endswith(".jsonl"):
        lines, last = 0, b"\n"
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                lines, last = lines + chunk.count(b"\n"), chunk[-1:]
        if lines + (last != b"\n") <= limit:  # rows <= lines (+1 when the last line has no newline)
            return False
    try:
        return sum(1 for _ in islice(iter_rows(path, split=split), limit + 1)) > limit
    except Exception:
        return False  # unreadable rows are reported when the job runs, with their line numbers


def normalise(config: JobConfig, settings: Settings) -> JobConfig:
    """What was checked is what is used: URLs in their parsed form, paths absolute."""
    config = config.model_copy(deep=True)

    def urls(t: TeacherConfig) -> None:
        if t.backend in ("local", "vllm-offline"):
            return
        if t.base_url is None:
            t.base_url = OPENAI_DEFAULT
        elif isinstance(t.base_url, str):
            t.base_url = str(parse_url(t.base_url))
        else:
            t.base_url = [str(parse_url(u)) for u in t.base_url]

    def absolute(value: str) -> str:
        return value if Path(value).is_absolute() else str(settings.data_roots[0] / value)

    urls(config.teacher)
    config.seeds.path = absolute(config.seeds.path)
    if config.generation.icl.pool:
        config.generation.icl.pool = absolute(config.generation.icl.pool)
    for f in config.eval.files:
        f.path = absolute(f.path)
    for spec in config.filters:
        if spec.name == "judge":
            urls(spec.teacher)
        elif spec.name == "decontaminate":
            spec.eval_sets = [absolute(s) for s in spec.eval_sets]
    return config


_RANDOM_FIELD = re.compile(r"(?<![A-Za-z])R(?![A-Za-z])", re.IGNORECASE)


def stored_form(config: JobConfig, settings: Settings) -> dict[str, Any]:
    """The config as the service stores it: normalised, without the fields the worker sets from the server."""
    data = normalise(config, settings).model_dump(mode="json")
    for section, name in SERVER_OWNED:
        data.get(section, {}).pop(name, None)
    return data


def cron_problem(cron: str, timezone: str, min_seconds: float) -> str | None:
    """Why a cron expression is not allowed (None: it is): it must parse and fire at most every `min_seconds`."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    if not isinstance(cron, str) or len(cron) > 128 or not croniter.is_valid(cron):
        return "not a cron expression"
    if _RANDOM_FIELD.search(cron):
        # croniter's `R` picks a random time per evaluation: the fire rate checked here is not the one run.
        return "random fields (R) are not allowed; give the minute and hour"
    try:
        it = croniter(cron, datetime.now(UTC).astimezone(ZoneInfo(timezone)))
        times = [it.get_next(float) for _ in range(120)]
    except Exception:
        return "not a cron expression"
    gap = min(b - a for a, b in pairwise(times))
    if gap < min_seconds:
        return f"fires every {gap:g} s; at most one fire per {min_seconds:g} s (DISTILFORGE_LIMITS_SCHEDULE_SECONDS)"
    return None
