"""Self-Instruct (`mode: self-instruct`; Wang et al. 2023): grow a task pool from seed tasks.

Each round asks the teacher for `proposals_per_round` new tasks, each prompt showing up to 6 seed
tasks and 2 machine-made ones drawn with a seeded RNG. A proposal is kept when it parses (JSON
instruction / input / output), passes the paper's heuristics, and its ROUGE-L against every
instruction in the pool is below `rouge_threshold` (0.7); kept instructions join the pool, until
`target_count`. Rounds are decided in request order, so a resumed run replays the journal into the
same pool.
"""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator

from distilforge.core.seeds import SeedError, iter_rows
from distilforge.modes.rouge import NoveltyPool, tokenize
from distilforge.modes.sampling import build_record
from distilforge.pipeline.steps import PipelineStep, current_context
from distilforge.prompts import render, template_hash
from distilforge.schemas import JobConfig
from distilforge.schemas.records import Record, Seed
from distilforge.schemas.teacher_answers import Task
from distilforge.teachers import display_model
from distilforge.teachers.sampler import Sampler, open_sampler, sample_many
from distilforge.teachers.structured import parse_model, with_schema

# The paper's filter: tasks about images, graphs, files, maps, drawings, plots or going to places
# cannot be done by a language model.
BANNED_WORDS = {"image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"}


def heuristics(task: Task) -> str | None:
    """The Self-Instruct paper's rules; returns why a task fails them."""
    words = task.instruction.split()
    if len(words) <= 3 or len(words) > 150:
        return f"instruction has {len(words)} words (keep 4..150)"
    lowered = task.instruction.lower()
    for word in BANNED_WORDS:
        if re.search(rf"\b{re.escape(word)}\b", lowered):
            return f"mentions '{word}', which a language model cannot do"
    if lowered.startswith("write a program"):
        return "starts with 'Write a program' (ambiguous whether code or output is wanted)"
    if not task.instruction[0].isalnum():
        return "starts with punctuation"
    if not task.instruction.isascii():
        return "non-English characters"
    return None


def load_seed_tasks(path: str) -> list[dict[str, str]]:
    """Self-Instruct seed files: {"instruction", "instances": [{"input", "output"}]}; flat rows work too."""
    tasks = []
    for where, row in iter_rows(path):
        if not isinstance(row, dict) or not row.get("instruction"):
            raise SeedError(f"{where}: a seed task needs an 'instruction' field")
        instance = (row.get("instances") or [{}])[0]
        tasks.append({"id": str(row.get("id", len(tasks))), "instruction": row["instruction"],
                      "input": instance.get("input", row.get("input", "")) or "",
                      "output": instance.get("output", row.get("output", "")) or ""})
    return tasks


class SelfInstruct(PipelineStep):
    """A source step: ignores its input stream and yields accepted instruction records.

    The pool is one global set that each round reads, so it grows on rank 0 only.
    """

    name = "self_instruct"
    rejects = True

    def __init__(self, config: JobConfig):
        self.config = config
        self.template = config.generation.template_name
        self.template_sha = template_hash(self.template)
        self.teacher_model = display_model(config.teacher)

    def _prompt(self, rng: random.Random, human: list[dict[str, str]], machine: list[dict[str, str]]) -> str:
        shown = rng.sample(human, min(6, len(human))) + rng.sample(machine, min(2, len(machine)))
        rng.shuffle(shown)
        return render(self.template, tasks=shown)

    async def _ask(self, sampler: Sampler, seeds: list[Seed]) -> list[Record]:
        ctx = current_context()
        outcomes = await sample_many(sampler, [(s.seed_id, s.messages or []) for s in seeds])
        records = []
        for seed, outcome in zip(seeds, outcomes, strict=True):
            for sample in outcome.samples:
                records.append(build_record(seed, sample, seed.messages or [], {}, self.teacher_model))
            for missing in outcome.missing(seed.seed_id, ctx.stopped):
                ctx.fail(missing)
        return sorted(records, key=lambda r: (r.seed_id, r.sample_index))

    async def _with_repairs(self, sampler: Sampler, batch: list[Record]) -> list[Record]:
        """One bounded repair round: a reply that is not a valid task is shown to the teacher with the
        error and asked for again. The broken reply is still accounted for (rejected, invalid_json)."""
        repairs, order = [], []
        for record in batch:
            _, error = parse_model(record.text, Task)
            order.append(record)
            if error is not None and not record.seed_id.endswith("~fix"):
                messages = [*record.prompt, {"role": "assistant", "content": record.text},
                            {"role": "user", "content": f"That is not a valid task ({error}). Reply with the JSON "
                                                        'object only: {"instruction": ..., "input": ..., "output": ...}'}]
                repairs.append(Seed(seed_id=f"{record.seed_id}~fix", question=record.question, gold=None,
                                    answer_type="text", source="self-instruct repair", messages=messages))
        if not repairs:
            return order
        fixed = {r.seed_id: r for r in await self._ask(sampler, repairs)}
        out = []
        for record in order:
            out.append(record)
            if f"{record.seed_id}~fix" in fixed:
                out.append(fixed[f"{record.seed_id}~fix"])
        return out

    def _accept(self, record: Record, machine: list[dict[str, str]], pool: NoveltyPool) -> bool:
        task, error = parse_model(record.text, Task)
        if task is None:
            self.reject(record, "invalid_json", error or "not a task")
            return False
        record.instruction, record.input, record.output = task.instruction, task.input or None, task.output
        reason = heuristics(task)
        if reason:
            self.reject(record, "heuristics", reason)
            return False
        tokens = tokenize(task.instruction)
        score, item = pool.max_rouge_l(tokens, stop_at=self.config.generation.rouge_threshold)
        record.rouge_l_max = round(score, 4)
        if score >= self.config.generation.rouge_threshold:
            self.reject(record, "rouge_l", f"ROUGE-L {score:.2f} with pool item {item}")
            return False
        pool.add(tokens)
        machine.append({"instruction": task.instruction, "input": task.input, "output": task.output})
        return True

    async def run(self, records: AsyncIterator[Record], rank: int = 0, world_size: int = 1) -> AsyncIterator[Record]:
        if rank != 0:
            return
        ctx = current_context()
        teacher = with_schema(self.config.teacher, Task, "task")
        sampler = await open_sampler(ctx, "generate", teacher, stage="generate", counts_samples=False)
        g = self.config.generation
        human = load_seed_tasks(self.config.seeds.path)
        if self.config.seeds.limit:
            human = human[: self.config.seeds.limit]
        pool = NoveltyPool()
        for task in human:
            pool.add(task["instruction"])
        machine: list[dict[str, str]] = []
        rng = random.Random(g.rng_seed)
        max_rounds = 5 * -(-g.target_count // g.proposals_per_round)  # give up on a teacher that repeats itself
        stats = self.stats
        for round_no in range(max_rounds):
            if len(machine) >= g.target_count or sampler.stopped:
                break
            proposals = [
                Seed(seed_id=f"si-{round_no:04d}-{j:03d}", question=f"self-instruct proposal {round_no}/{j}",
                     gold=None, answer_type="text", source="self-instruct",
                     messages=[{"role": "user", "content": self._prompt(rng, human, machine)}])
                for j in range(g.proposals_per_round)
            ]
            batch = await self._with_repairs(sampler, await self._ask(sampler, proposals))
            for record in batch:
                stats.n_in += 1
                record.mode, record.template, record.template_sha = "self-instruct", self.template, self.template_sha
                if len(machine) >= g.target_count:
                    self.reject(record, "target_reached", f"already {g.target_count} instructions")
                    continue
                with self.track_time():
                    accepted = self._accept(record, machine, pool)
                if accepted:
                    user = record.instruction + (f"\n\n{record.input}" if record.input else "")
                    record.student_prompt = [{"role": "user", "content": user}]
                    stats.n_out += 1
                    ctx.progress.advance(1)
                    yield record
