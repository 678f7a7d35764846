"""The generate stage of a job: seeds -> teacher -> parse -> filters -> dataset, plus run.json."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from rich.console import Console

from distilforge.core.budget import Budget, BudgetError
from distilforge.core.config import JobConfig
from distilforge.core.dataset import (
    REJECTED_COLUMNS,
    JsonlSink,
    apply_global_filters,
    jsonl_to_dataset,
    write_dataset,
)
from distilforge.core.journal import Journal
from distilforge.core.prices import resolve_prices
from distilforge.core.progress import RunProgress
from distilforge.core.records import Record
from distilforge.core.run_files import snapshot_config, update_run, write_atomic
from distilforge.core.seeds import count_and_validate, read_seeds
from distilforge.core.steps import Filter, PipelineStep
from distilforge.modes import ParseAnswer, Prompter, filters_for, make_prompter
from distilforge.modes.generate import Generate, GenerateStats
from distilforge.quality import build_filters
from distilforge.quality.policy import SeedPolicy
from distilforge.run.executor import LocalExecutor
from distilforge.teachers import make_teacher


class Keep(PipelineStep):
    """The sink at the end of the filters: writes what survived every filter."""

    name = "keep"

    def __init__(self, sink: JsonlSink, progress: RunProgress):
        self.sink = sink
        self.progress = progress

    async def run(self, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        async for record in records:
            self.sink.write(record)
            self.progress.add_kept()
            yield record


def teacher_identity(config: JobConfig) -> dict[str, Any]:
    """What makes two requests the same logical request: not the URL or replica, not concurrency."""
    t = config.teacher
    backend = "openai" if t.backend == "vllm" else t.backend  # a vLLM server speaks the same API
    return {"backend": backend, "model": t.model, "params": t.params.model_dump(mode="json")}


def seed_kwargs(config: JobConfig) -> dict[str, Any]:
    s = config.seeds
    return {"limit": s.limit, "answer_type": config.generation.answer_type, "split": s.split, "subset": s.subset}


def make_budget(config: JobConfig, journal: Journal) -> Budget:
    multiplier = config.budget.batch_discount if config.teacher.batch else 1.0
    # Earlier runs of this folder count: settled answers at cost, orphaned reservations at worst case.
    spent = journal.spent_usd() + journal.batch_reserved_usd()
    return Budget(resolve_prices(config), config.budget.max_usd, multiplier=multiplier, spent=spent)


class _Interrupts:
    """First Ctrl-C: stop dispatching, let in-flight requests finish. Second: cancel them."""

    def __init__(self, generates: list[Generate], console: Console):
        self.generates = generates
        self.console = console
        self.count = 0
        self.task: asyncio.Task[Any] | None = None

    def __call__(self) -> None:
        self.count += 1
        for generate in self.generates:
            generate.stop("interrupted")
        if self.count == 1:
            self.console.print("[yellow]stopping[/yellow]: no new requests; waiting for those in flight "
                               "(Ctrl-C again to abandon them; they will be re-sent on resume)")
        elif self.task is not None:
            self.task.cancel()


def expected_samples(config: JobConfig, n_seeds: int) -> int:
    g = config.generation
    if g.mode == "self-instruct":
        return g.target_count
    if g.mode == "evol-instruct":
        return n_seeds * g.rounds * 2  # an evolution and an answer per instruction and round
    return n_seeds * g.samples_per_seed


def build_steps(config: JobConfig, new_generate: Any, prompter: Prompter,
                quality: list[PipelineStep]) -> tuple[list[PipelineStep], list[Generate]]:
    """The pipeline for the configured mode; also returns its Generate steps (for stats and stops)."""
    g = config.generation
    if g.mode == "self-instruct":
        from distilforge.modes.self_instruct import SelfInstruct

        generate = new_generate(g.model_copy(update={"samples_per_seed": 1}), prompter)
        return [SelfInstruct(config, generate), *filters_for(g.mode), *quality], [generate]
    if g.mode == "evol-instruct":
        from distilforge.modes.evol_instruct import EvolInstruct

        single = g.model_copy(update={"samples_per_seed": 1})
        answering = g.model_copy(update={"mode": "instruct", "template": None, "samples_per_seed": 1})
        evolve, answer = new_generate(single, Prompter(single)), new_generate(answering, Prompter(answering))
        return [EvolInstruct(config, evolve, answer), ParseAnswer(), *filters_for("instruct"), *quality], [evolve, answer]
    generate = new_generate(g, prompter)
    steps: list[PipelineStep] = [generate, ParseAnswer(), *filters_for(g.mode), *quality]
    if g.self_consistency or g.keep != "all" or g.max_per_seed:
        steps.append(SeedPolicy(g))
    return steps, [generate]


def merged_stats(generates: list[Generate]) -> GenerateStats:
    total = GenerateStats()
    for generate in generates:
        for name, value in vars(generate.stats).items():
            if name in ("first_request", "last_response"):
                if value is not None:
                    current = getattr(total, name)
                    pick = min if name == "first_request" else max
                    setattr(total, name, value if current is None else pick(current, value))
            else:
                setattr(total, name, getattr(total, name) + value)
    return total


class RunControl:
    """How an embedding process (the service's worker) steers a run: stop requests, budget, lease."""

    def stop_reason(self) -> str | None:
        """Polled every quarter second: a reason ('cancelled', ...) stops dispatching."""
        return None

    def lost(self) -> bool:
        """True once the run must stop at once (its lease is gone): in-flight work is abandoned."""
        return False

    def guard(self) -> None:
        """Called before each journal commit; raises to refuse the write."""

    def report(self, progress: dict[str, Any]) -> None:
        """Receives the run's progress four times a second."""

    def budget(self, config: JobConfig, journal: Journal) -> Budget:
        return make_budget(config, journal)


async def _watch(control: RunControl, generates: list[Generate], task: asyncio.Task[Any],
                 progress: RunProgress) -> None:
    while True:
        await asyncio.sleep(0.25)
        control.report(progress.snapshot())
        if control.lost():
            for generate in generates:
                generate.stop("lease_lost")
            task.cancel()
            return
        reason = control.stop_reason()
        if reason:
            for generate in generates:
                generate.stop(reason)


async def _generate(config: JobConfig, run_dir: Path, console: Console,
                    control: RunControl | None = None) -> dict[str, Any]:
    control = control or RunControl()
    started = time.monotonic()
    # Everything that can be wrong with the input is checked before a file is written or a request sent.
    n_seeds = count_and_validate(config.seeds.path, config.seeds.fields, **seed_kwargs(config))
    expected = expected_samples(config, n_seeds)
    if config.budget.max_usd is not None and resolve_prices(config) is None:
        raise BudgetError("budget.max_usd needs budget.prices: this model is not in the built-in price table")
    if config.generation.mode == "self-instruct" and config.teacher.backend in ("openai", "vllm") \
            and config.teacher.params.response_format is None:
        from distilforge.modes.self_instruct import Task
        from distilforge.teachers.structured import response_format

        # Servers that can enforce a schema get one; other teachers' JSON is repaired and validated.
        config = config.model_copy(deep=True)
        config.teacher.params.response_format = response_format(Task, "task")
    teacher = make_teacher(config.teacher)  # an OpenAI teacher checks its key variable here
    prompter = make_prompter(config.generation)
    prompter.prepare(config.seeds.path)

    staging = run_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    journal = Journal(run_dir / "journal.sqlite", guard=control.guard)
    budget = control.budget(config, journal)
    snapshot_config(config, run_dir)
    orphans = journal.orphan_count()
    kept_sink = JsonlSink(staging / "kept.jsonl", REJECTED_COLUMNS)  # same columns: global filters may reject
    rejected_sink = JsonlSink(staging / "rejected.jsonl", REJECTED_COLUMNS)
    rejected_counts: Counter[str] = Counter()

    def reject(record: Record) -> None:
        rejected_counts[record.reject_reason or "unknown"] += 1
        rejected_sink.write(record)

    batch_report: dict[str, Any] | None = None
    interrupts: _Interrupts | None = None
    handles_sigint = False
    loop = asyncio.get_running_loop()
    try:
        with RunProgress(console, expected, budget) as progress:
            def new_generate(generation: Any, mode_prompter: Prompter) -> Generate:
                return Generate(
                    teacher, journal, generation, teacher_identity(config),
                    budget=budget, completion_budget=config.teacher.completion_budget(),
                    on_progress=progress.advance, supports_n=config.teacher.supports_n,
                    journal_only=config.teacher.batch, prompter=mode_prompter,
                )

            quality, final_filters = build_filters(config)
            for step in quality:
                if hasattr(step, "bind"):
                    step.bind(journal)  # the judge journals its verdicts like teacher answers
            steps, generates = build_steps(config, new_generate, prompter, quality)
            filters = [s for s in steps if isinstance(s, Filter)]
            for f in filters:
                f.reject_sink = reject
            generate = generates[0]
            interrupts = _Interrupts(generates, console)
            interrupts.task = asyncio.current_task()
            # Only the main thread of a POSIX process can take signals (a service worker runs jobs in
            # threads and stops them through RunControl instead).
            handles_sigint = sys.platform != "win32" and threading.current_thread() is threading.main_thread()
            if handles_sigint:
                loop.add_signal_handler(signal.SIGINT, interrupts)
            console.print(f"[dim]{n_seeds} seeds x {config.generation.samples_per_seed} samples; "
                          f"teacher {config.teacher.backend}:{config.teacher.model}"
                          + (f"; budget ${budget.spent:.4f} of ${config.budget.max_usd} spent"
                             if config.budget.max_usd else "") + "[/dim]")
            watcher = asyncio.create_task(_watch(control, generates, asyncio.current_task(), progress))  # type: ignore[arg-type]
            await teacher.start()
            if config.teacher.batch:
                from distilforge.run.batch import run_batches

                batch_report = await run_batches(config, teacher, journal, budget, generate, console)
            steps.append(Keep(kept_sink, progress))
            source = (read_seeds(config.seeds.path, config.seeds.fields, **seed_kwargs(config))
                      if generate is steps[0] else iter(()))
            try:
                await LocalExecutor(steps).run(source)
            except asyncio.CancelledError:
                if not (interrupts and interrupts.count >= 2):
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            finally:
                watcher.cancel()
    finally:
        if handles_sigint:
            loop.remove_signal_handler(signal.SIGINT)
        await teacher.aclose()
        kept_sink.close()
        rejected_sink.close()
        dead = journal.dead_letters()
        write_atomic(run_dir / "failed.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dead))
        journal.close()

    kept_path = staging / "kept.jsonl"
    if final_filters:
        kept_path = apply_global_filters(final_filters, kept_path, staging / "rejected.jsonl", rejected_counts)
    kept = write_dataset(kept_path, run_dir, config.output.validation_fraction, config.generation.rng_seed)
    jsonl_to_dataset(staging / "rejected.jsonl", REJECTED_COLUMNS, run_dir / "rejected",
                     run_dir / "parquet" / "rejected.parquet")
    stats = merged_stats(generates)
    stopped = next((g.stopped for g in generates if g.stopped), None)
    wall = (stats.last_response - stats.first_request) if stats.first_request and stats.last_response else 0.0
    summary = {
        "name": config.name,
        "status": "completed" if stopped is None else "stopped",
        "stopped": stopped or "done",
        "mode": config.generation.mode,
        "teacher": {"backend": config.teacher.backend, "model": config.teacher.model,
                    "params": config.teacher.params.model_dump(mode="json", exclude_none=True)},
        "seeds": {"path": config.seeds.path, "count": n_seeds},
        "samples": {
            "expected": expected,
            "from_journal": stats.samples_from_journal,
            "new": stats.samples_new,
            "failed": len(dead),
            "not_sent": stats.samples_not_sent,
        },
        "requests_saved": stats.samples_saved,
        "requests": {
            "sent": stats.requests_sent,
            "succeeded": stats.requests_succeeded,
            "failed": stats.requests_failed,
            "retried": teacher.stats.retries,
            "rate_limited": teacher.stats.rate_limited,
            "attempts": teacher.stats.attempts,
            "errors": teacher.stats.errors_by_kind,
        },
        "tokens": {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens},
        "cost_usd": round(budget.spent_this_run, 6) if budget.prices is not None else None,
        "budget": {
            "max_usd": config.budget.max_usd,
            "spent_usd_total": round(budget.spent, 6),
            "orphaned_requests": orphans,
            "prices": budget.prices.model_dump() if budget.prices else None,
        },
        "kept": kept,
        "rejected": dict(rejected_counts),
        "filters": [f.report() for f in filters] + [f.report() for f in final_filters],
        "wall_seconds": round(wall, 3),
        "total_seconds": round(time.monotonic() - started, 3),
    }
    if batch_report is not None:
        summary["batch"] = batch_report
    judge_cost = sum(getattr(f, "cost_usd", 0.0) for f in filters)
    if judge_cost:
        summary["judge_cost_usd"] = round(judge_cost, 6)
    run = update_run(run_dir, **summary)
    from distilforge.publish import write_card

    write_card(config, run_dir)
    return run


def run_generate(config: JobConfig, run_dir: Path, console: Console,
                 control: RunControl | None = None) -> dict[str, Any]:
    return asyncio.run(_generate(config, run_dir, console, control))  # the folder is made once input checks pass
