"""The generation step: seeds in, one Record per teacher sample out, as answers arrive.

Each seed needs `samples_per_seed` samples, asked for through the run's `Sampler` (journal replay,
budget, retries). Seeds are worked on concurrently, a bounded window of them at a time, so the seed
stream is read lazily and memory does not grow with the dataset. Each seed's samples go downstream
together (per-seed steps rely on it). A seed whose requests failed with a retryable error waits for a
second pass at the end of the stream, after `teacher.retry.second_pass_after_s`, so a server that was
down for a few seconds loses nothing; what still fails is reported as failed, sample by sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from distilforge.core.grading import grade, split_answer
from distilforge.core.seeds import SeedSelection
from distilforge.modes import Prompter, make_prompter, parse_record
from distilforge.pipeline.steps import PipelineStep, RankContext, current_context
from distilforge.quality.policy import majority
from distilforge.schemas import GenerationConfig, JobConfig
from distilforge.schemas.records import Record, Seed
from distilforge.teachers import display_model
from distilforge.teachers.sampler import Outcome, Sample, Sampler, open_sampler

# Stops after which the rest of the seeds are left unread (a budget stop still records each as not sent).
UNREAD_AFTER = ("cancelled", "lease_lost")
_DONE = object()


def build_record(seed: Seed, sample: Sample, messages: list[dict[str, str]], fields: dict[str, Any],
                 teacher_model: str) -> Record:
    record = Record(
        seed_id=seed.seed_id,
        sample_index=sample.index,
        question=seed.question,
        gold=seed.gold,
        answer_type=seed.answer_type,
        prompt=messages,
        teacher_model=teacher_model,
        text=sample.completion.text,
        finish_reason=sample.completion.finish_reason,
        prompt_tokens=sample.prompt_tokens,
        completion_tokens=sample.completion_tokens,
        reasoning=sample.completion.reasoning,
        reasoning_tokens=sample.completion.reasoning_tokens,
    )
    for name, value in fields.items():
        setattr(record, name, value)
    raw_gold = seed.meta.get("raw_answer")
    if raw_gold is not None:
        _, stated = split_answer(raw_gold)
        record.meta["gold_raw"] = stated if stated is not None else raw_gold
    return record


async def open_prompter(ctx: RankContext, generation: GenerationConfig) -> Prompter:
    """The mode's prompter, prepared once per rank off the event loop (ICL loads and embeds its pool)."""

    async def opener() -> tuple[Prompter, None]:
        prompter = make_prompter(generation)
        await asyncio.to_thread(prompter.prepare, ctx.config.seeds.path)
        return prompter, None

    return await ctx.resource(f"prompter:{generation.mode}:{generation.template_name}", opener)


class Generate(PipelineStep):
    name = "generate"

    def __init__(self, config: JobConfig, generation: GenerationConfig | None = None, *, name: str = "generate",
                 round: int = 0, first_sample: int = 0, selection: SeedSelection | None = None):
        self.config = config
        self.generation = generation or config.generation
        self.name = name
        self.teacher_model = display_model(config.teacher)
        self.round = round  # a targeted round's records say so; its samples are new indices, so new requests
        self.first_sample = first_sample
        # The seeds the pipeline's source lets through: the Batch API reads them itself, before the stream.
        self.selection = selection

    # -- one seed ---------------------------------------------------------------------------------
    def _records(self, seed: Seed, outcome: Outcome, messages: list[dict[str, str]],
                 fields: dict[str, Any]) -> list[Record]:
        model = self.teacher_model
        records = [build_record(seed, s, messages, fields, model) for s in sorted(outcome.samples, key=lambda s: s.index)]
        for record in records:
            record.round = self.round
        return records

    def _enough(self, seed: Seed, records: list[Record]) -> bool:
        """Adaptive sampling: gold hit often enough, or (no gold) enough answers agree."""
        g = self.generation
        parsed = [parse_record(r) for r in records]
        if seed.gold is not None:
            wanted = 1 if g.keep == "one" else (g.max_per_seed or 1)
            return sum(1 for r in parsed if grade(r.meta.get("answer_raw"), seed.gold, seed.answer_type,
                                                  r.meta.get("gold_raw")) and r.finish_reason != "length") >= wanted
        answer, share = majority(parsed)
        agree = g.adaptive.agree if g.adaptive else 0
        return answer is not None and round(share * sum(1 for r in parsed if r.answer is not None)) >= agree

    async def _seed(self, sampler: Sampler, prompter: Prompter, seed: Seed) -> tuple[Seed, Any, Any, Outcome, int]:
        if prompter.blocking:  # nearest-neighbour ICL runs an embedding model: not on the event loop
            messages, fields = await asyncio.to_thread(prompter.build, seed)
        else:
            messages, fields = prompter.build(seed)
        k, first = self.generation.samples_per_seed, self.first_sample
        adaptive = self.generation.adaptive
        if adaptive is None:
            return seed, messages, fields, await sampler.sample(seed.seed_id, messages, range(first, first + k)), 0
        # Rounds of `batch` samples until the answers settle; sample indices stay 0..k-1 so a resumed
        # run asks the same requests and replays them from the journal.
        step = adaptive.batch or adaptive.agree
        total, done = Outcome(), 0
        while done < k and not sampler.stopped:
            part = await sampler.sample(seed.seed_id, messages, range(first + done, first + min(k, done + step)))
            total.samples += part.samples
            total.failed += part.failed
            total.not_sent += part.not_sent
            done = min(k, done + step)
            if self._enough(seed, self._records(seed, total, messages, fields)):
                break
        saved = k - done
        if saved:
            self.stat_update("requests_saved", saved)
            sampler.progress.advance(saved)
        return seed, messages, fields, total, saved

    def _settle(self, ctx: RankContext, seed: Seed, outcome: Outcome, final: bool) -> bool:
        """Report what is missing for good; True when the seed should wait for the second pass."""
        if not final and not outcome.not_sent and any(retryable for _, _, retryable in outcome.failed):
            return True
        for missing in outcome.missing(seed.seed_id, ctx.stopped):
            ctx.fail(missing)
        return False

    # -- the stream -------------------------------------------------------------------------------
    async def _until_cancelled(self, seeds: AsyncIterator[Seed], sampler: Sampler, ctx: RankContext) -> AsyncIterator[Seed]:
        """The seeds, until the run is cancelled: then the rest are left unread and recorded as one flag,
        not walked one by one to be marked not sent (a million of them held a worker for minutes)."""
        async for seed in seeds:
            if sampler.stopped in UNREAD_AFTER:
                self.stats.counters["stopped_before_reading_all_seeds"] = 1
                ctx.log(f"stopped ({sampler.stopped}): seeds after the first {self.stats.n_in} were not read")
                return
            yield seed

    async def run(self, seeds: AsyncIterator[Seed], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        ctx = current_context()
        sampler = await open_sampler(ctx, self.name, self.config.teacher, stage="generate",
                                     journal_only=self.config.teacher.batch_api)
        prompter = await open_prompter(ctx, self.generation)
        stats = self.stats
        if self.config.teacher.batch_api:
            from distilforge.modes.batch import BatchRun

            ctx.sections["batch"] = await BatchRun(self.config, sampler, prompter, rank, world_size, ctx.log,
                                                   selection=self.selection, first_sample=self.first_sample).run()
            sampler.replay_from_journal()
        window = sampler.teacher.max_concurrency * 2  # seeds open at once: the stream is read lazily
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=window * 2)
        deferred: list[tuple[Seed, Any, Any, Outcome]] = []
        errors: list[BaseException] = []

        async def one(seed: Seed, slot: asyncio.Semaphore) -> None:
            try:
                seed, messages, fields, outcome, _ = await self._seed(sampler, prompter, seed)
                if self._settle(ctx, seed, outcome, final=False):
                    deferred.append((seed, messages, fields, outcome))
                else:
                    await out.put(self._records(seed, outcome, messages, fields))
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                errors.append(exc)
            finally:
                slot.release()

        async def second_pass() -> None:
            """Failed requests get one more try after a pause (a server restart loses nothing)."""
            if not deferred:
                return
            await sampler.pause(sampler.retry.second_pass_after_s)
            stats.counters["second_pass_seeds"] += len(deferred)

            async def retry(item: tuple[Seed, Any, Any, Outcome]) -> None:
                seed, messages, fields, outcome = item
                indices = [index for index, _, _ in outcome.failed]
                again = await sampler.sample(seed.seed_id, messages, indices, again=True)
                outcome.samples += again.samples
                outcome.failed, outcome.not_sent = again.failed, outcome.not_sent + again.not_sent
                self._settle(ctx, seed, outcome, final=True)
                await out.put(self._records(seed, outcome, messages, fields))

            await asyncio.gather(*(retry(item) for item in sorted(deferred, key=lambda d: d[0].seed_id)))

        async def feed() -> None:
            slot = asyncio.Semaphore(window)
            tasks: set[asyncio.Task[None]] = set()
            try:
                async for seed in self._until_cancelled(seeds, sampler, ctx):
                    await slot.acquire()
                    stats.n_in += 1
                    task = asyncio.create_task(one(seed, slot))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                await second_pass()
            finally:
                for task in tasks:
                    task.cancel()
                await out.put(_DONE)

        feeder = asyncio.create_task(feed())
        try:
            while (item := await out.get()) is not _DONE:
                stats.n_out += len(item)
                for record in item:
                    yield record
            await feeder
            if errors:
                raise errors[0]
        finally:
            if not feeder.done():
                feeder.cancel()
