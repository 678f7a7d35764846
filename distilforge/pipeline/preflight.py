"""Everything that can be wrong with a job's input, checked before a file is written or a request sent.

Seeds, the ICL pool, templates, eval sets, decontamination sets, every teacher's key variable (the
generator's, each judge's), vLLM servers' health, the price behind a cap, the student model, GKD's teacher and tokenizers: a
problem raises one of the known input errors, which the CLI prints as one line and exits 2 for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distilforge.core.prices import resolve_prices
from distilforge.core.seeds import iter_rows
from distilforge.models import check_model
from distilforge.modes import make_prompter
from distilforge.pipeline.sources import SeedSource
from distilforge.prompts import template_hash
from distilforge.schemas import ConfigError, JobConfig, TeacherConfig
from distilforge.teachers import make_teacher
from distilforge.teachers.base import TeacherError


@dataclass
class Facts:
    n_seeds: int
    expected: int
    eval_questions: int | None = None
    rejected_seeds: list[dict[str, str]] = field(default_factory=list)  # seeds.on_bad_line: skip
    probe: list[dict[str, Any]] | None = None  # `loop:`'s probe split, read in the same pass (written under the lock)


def _teacher(config: TeacherConfig, where: str) -> None:
    try:
        make_teacher(config)  # an API teacher checks its key variable here
    except TeacherError as exc:
        raise TeacherError(str(exc).replace("teacher.", f"{where}.", 1)) from None
    if config.backend in ("local", "vllm-offline"):
        # vLLM engines load their model where they run (Ray's GPU workers, with their own HF cache).
        check_model(config.model, hub=config.backend == "local")
    if config.backend == "vllm":
        from distilforge.teachers.openai_api import check_vllm_servers

        key = make_teacher(config)._api_key()  # type: ignore[attr-defined]
        asyncio.run(check_vllm_servers(config.base_urls, config.model, key, config.api_key_env is None))


class ChecksStopped(Exception):
    """The run was told to stop (a cancel) while its inputs were being checked; the reason is the message."""


def _count_seeds(config: JobConfig, should_stop: Callable[[], str | None] | None) -> Facts:
    """Read (and so validate) every seed once: how many the first pass works on, the lines left out,
    and with `loop:` the probe split it holds apart. A million seeds take minutes to grade, so a stop
    request is looked at every few thousand rows."""
    from distilforge.pipeline.build import main_selection
    from distilforge.pipeline.rounds import probe_row

    facts = Facts(0, 0, probe=[] if config.loop.rounds else None)
    chosen = main_selection(config)
    for n, seed in enumerate(SeedSource(config).read(rejected=facts.rejected_seeds), 1):
        if chosen(seed.seed_id):
            facts.n_seeds += 1
        elif facts.probe is not None:
            facts.probe.append(probe_row(seed))
        if should_stop is not None and n % 4096 == 0:
            reason = should_stop()
            if reason:
                raise ChecksStopped(reason)
    return facts


def _probe(config: TeacherConfig, where: str) -> None:
    if config.backend != "openai":  # vLLM servers are checked above; local backends have no endpoint
        return
    from distilforge.teachers.openai_api import OPENAI_URL, probe_endpoints

    key = make_teacher(config)._api_key()  # type: ignore[attr-defined]
    asyncio.run(probe_endpoints(list(config.base_urls) or [OPENAI_URL], key, config.api_key_env, where))


def probe_teachers(config: JobConfig, stages: tuple[str, ...]) -> None:
    """Every API teacher this run will pay, asked once for its free model list (under the folder's lock,
    before the first request): a refused key or a server that is down is exit 2, with nothing paid."""
    if "generate" in stages or "rounds" in stages:
        _probe(config.teacher, "teacher")
        if "generate" in stages:
            from distilforge.quality.judge import judge_teacher

            for i, spec in enumerate(config.filters):
                if spec.name == "judge":
                    _probe(judge_teacher(spec), f"filters.{i}.teacher")
    if config.eval.teacher and "eval" in stages and "generate" not in stages:
        from distilforge.evaluation.accuracy import eval_teacher_config

        _probe(eval_teacher_config(config), "eval.teacher")


def check_inputs(config: JobConfig, stages: tuple[str, ...],
                 should_stop: Callable[[], str | None] | None = None) -> Facts:
    from distilforge.core.budget import BudgetError
    from distilforge.pipeline.build import expected_samples

    g = config.generation
    if "generate" in stages:
        if g.mode == "self-instruct":
            from distilforge.modes.self_instruct import load_seed_tasks

            seeds = Facts(len(load_seed_tasks(config.seeds.path)[: config.seeds.limit]), 0)
        else:
            seeds = _count_seeds(config, should_stop)
        try:
            template_hash(g.template_name)
        except FileNotFoundError as exc:
            raise ConfigError(f"generation.template: {exc}") from None
        if config.budget.max_usd is not None and resolve_prices(config) is None:
            raise BudgetError("budget.max_usd needs budget.prices: this model is not in the built-in price table")
        _teacher(config.teacher, "teacher")
        make_prompter(g).check(config.seeds.path)
        for i, spec in enumerate(config.filters):
            if spec.name == "judge":
                from distilforge.core.prices import judge_prices
                from distilforge.quality.judge import judge_teacher

                _teacher(judge_teacher(spec), f"filters.{i}.teacher")
                if config.budget.max_usd is not None and judge_prices(config, spec) is None:
                    raise BudgetError(f"filters.{i}.prices: budget.max_usd needs the judge's prices: "
                                      f"{spec.teacher.model} is not in the built-in price table")
            elif spec.name == "decontaminate":
                for j, source in enumerate(spec.eval_sets):
                    try:
                        next(iter(iter_rows(source, split=spec.split)), None)
                    except Exception as exc:
                        raise ConfigError(f"filters.{i}.eval_sets.{j}: {source}: {exc}") from None
    else:
        seeds = Facts(0, 0)
    facts = Facts(seeds.n_seeds, expected_samples(config, seeds.n_seeds), rejected_seeds=seeds.rejected_seeds,
                  probe=seeds.probe)
    if config.loop.rounds and ("generate" in stages or "rounds" in stages):
        from distilforge.models.embeddings import minilm_path

        minilm_path()  # the rounds find nearest seeds with it
        if config.loop.per_round_usd is not None and resolve_prices(config) is None:
            from distilforge.core.budget import BudgetError

            raise BudgetError("loop.per_round_usd needs budget.prices: this model is not in the built-in price table")
    if config.train.enabled and ("train" in stages or "generate" in stages or "rounds" in stages):
        from distilforge.models.tokenizer import check_loadable

        check_loadable(config.train.student)  # its config and tokenizer too: training must not fail after paying
    trains = "rounds" in stages or ("train" in stages and (len(stages) == 1 or config.train.enabled)) \
        or (config.train.enabled and "generate" in stages)
    if config.train.method == "gkd" and trains:
        from distilforge.trainers.gkd import check_gkd

        check_gkd(config)  # a local teacher sharing the student's tokenizer (only the tokenizers are loaded)
    if "eval" in stages or (config.train.enabled and "generate" in stages):
        from distilforge.evaluation import load_eval_questions

        facts.eval_questions = len(load_eval_questions(config))  # the files, not yet the validation split
    return facts


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").exists()
