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
- Money: a job never sets `budget.prices`; a teacher without a server price is refused when any cap
  applies (see `service/prices.py`).
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from itertools import islice, pairwise
from pathlib import Path
from typing import Any

from distilforge.core.config import JobConfig, TeacherConfig
from distilforge.core.urls import UrlError, parse_url, url_allowed
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
MAX_MINHASH_PERM = 1024
MAX_ICL_K = 64
MAX_ROUNDS = 16
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


def _is_model_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or spec.lower().endswith(".gguf") or not HUB_ID.match(spec)


class Checker:
    def __init__(self, config: JobConfig, settings: Settings, *, owner: str = "default",
                 schedule_cap: float | None = None, count_seeds: bool = True):
        self.config, self.settings, self.owner = config, settings, owner
        self.schedule_cap, self.count_seeds = schedule_cap, count_seeds
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

    # -- teachers ------------------------------------------------------------------------------
    def teacher(self, prefix: str, t: TeacherConfig) -> None:
        limits = self.limits
        if t.max_concurrency > limits.concurrency:
            self.add(f"{prefix}.max_concurrency", f"at most {limits.concurrency} (DISTILFORGE_LIMITS_CONCURRENCY)")
        if t.batch_size > limits.concurrency:
            self.add(f"{prefix}.batch_size", f"at most {limits.concurrency} (DISTILFORGE_LIMITS_CONCURRENCY)")
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

    # -- the whole job -------------------------------------------------------------------------
    def run(self) -> list[Problem]:
        c, limits = self.config, self.limits
        g = c.generation
        if c.output.dir is not None:
            self.add("output.dir", "a service job does not choose where it writes (its run folder is "
                                   "DISTILFORGE_HOME/runs/<job id>)")
        if c.budget.prices is not None:
            self.add("budget.prices", "service jobs are priced by the server (DISTILFORGE_PRICES), not by the job")
        # limits
        if g.samples_per_seed > limits.samples_per_seed:
            self.add("generation.samples_per_seed", f"at most {limits.samples_per_seed} "
                                                    "(DISTILFORGE_LIMITS_SAMPLES_PER_SEED)")
        if g.adaptive is not None:
            for key in ("agree", "batch"):
                value = getattr(g.adaptive, key)
                if value is not None and value > limits.samples_per_seed:
                    self.add(f"generation.adaptive.{key}", f"at most {limits.samples_per_seed}")
        if g.max_per_seed is not None and g.max_per_seed > limits.samples_per_seed:
            self.add("generation.max_per_seed", f"at most {limits.samples_per_seed}")
        if g.icl.k > MAX_ICL_K:
            self.add("generation.icl.k", f"at most {MAX_ICL_K}")
        if g.target_count > limits.seeds:
            self.add("generation.target_count", f"at most {limits.seeds} (DISTILFORGE_LIMITS_SEEDS)")
        if g.proposals_per_round > limits.concurrency:
            self.add("generation.proposals_per_round", f"at most {limits.concurrency}")
        if g.rounds > MAX_ROUNDS:
            self.add("generation.rounds", f"at most {MAX_ROUNDS}")
        if c.seeds.limit is not None and c.seeds.limit > limits.seeds:
            self.add("seeds.limit", f"at most {limits.seeds} (DISTILFORGE_LIMITS_SEEDS)")
        if c.executor.address is not None:
            self.add("executor.address", "service jobs run on the service's own workers")
        if c.executor.workers > limits.ranks:
            self.add("executor.workers", f"at most {limits.ranks} (DISTILFORGE_LIMITS_RANKS)")
        if c.eval.batch_size > limits.concurrency:
            self.add("eval.batch_size", f"at most {limits.concurrency}")
        # files
        seeds = self.path("seeds.path", c.seeds.path)
        if seeds is not None and self.count_seeds and (c.seeds.limit is None or c.seeds.limit > limits.seeds):
            self.count(seeds)
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
                if spec.batch > limits.concurrency:
                    self.add(f"filters.{i}.batch", f"at most {limits.concurrency}")
            elif spec.name == "decontaminate":
                for j, source in enumerate(spec.eval_sets):
                    self.path(f"filters.{i}.eval_sets.{j}", source)
            elif spec.name == "minhash" and spec.num_perm > MAX_MINHASH_PERM:
                self.add(f"filters.{i}.num_perm", f"at most {MAX_MINHASH_PERM}")
        self.model("train.student", c.train.student)
        if c.train.gkd.teacher is not None:
            self.model("train.gkd.teacher", c.train.gkd.teacher)
        if c.loop.rounds > MAX_ROUNDS:
            self.add("loop.rounds", f"at most {MAX_ROUNDS}")
        if c.loop.samples > limits.samples_per_seed:
            self.add("loop.samples", f"at most {limits.samples_per_seed} (DISTILFORGE_LIMITS_SAMPLES_PER_SEED)")
        if c.loop.neighbours > MAX_ICL_K:
            self.add("loop.neighbours", f"at most {MAX_ICL_K}")
        if c.output.hub_repo and c.output.hub_repo not in self.settings.hub_repos:
            self.add("output.hub_repo", "not an allowed repo (DISTILFORGE_HUB_REPOS)")
        self.prices()
        return self.problems

    def count(self, seeds: Path) -> None:
        from distilforge.core.seeds import iter_rows

        limit = self.limits.seeds
        try:
            n = sum(1 for _ in islice(iter_rows(str(seeds), split=self.config.seeds.split), limit + 1))
        except Exception:
            return  # unreadable rows are reported when the job runs, with their line numbers
        if n > limit:
            self.add("seeds.path", f"more than {limit} seeds (DISTILFORGE_LIMITS_SEEDS); set seeds.limit")

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
              count_seeds: bool = True) -> list[Problem]:
    return Checker(config, settings, owner=owner, schedule_cap=schedule_cap, count_seeds=count_seeds).run()


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


def cron_problem(cron: str, timezone: str, min_seconds: float) -> str | None:
    """Why a cron expression is not allowed (None: it is): it must parse and fire at most every `min_seconds`."""
    from zoneinfo import ZoneInfo

    from croniter import croniter

    if not isinstance(cron, str) or len(cron) > 128 or not croniter.is_valid(cron):
        return "not a cron expression"
    try:
        it = croniter(cron, datetime.now(UTC).astimezone(ZoneInfo(timezone)))
        times = [it.get_next(float) for _ in range(120)]
    except Exception:
        return "not a cron expression"
    gap = min(b - a for a, b in pairwise(times))
    if gap < min_seconds:
        return f"fires every {gap:g} s; at most one fire per {min_seconds:g} s (DISTILFORGE_LIMITS_SCHEDULE_SECONDS)"
    return None
