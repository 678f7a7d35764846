"""The pipeline of a job: a picklable description of what runs, built once from the config.

Stage 1 runs on every rank over its shard of the seeds (or, for the instruction modes that grow
their own seeds, from a source step); stage 2 runs once over the kept records of all ranks, in
seed_id order (the global filters). Executors decide where the ranks run; nothing here opens a
file, a connection or a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from distilforge.core.seeds import SeedSelection
from distilforge.modes import ANSWERABLE, ParseAnswer, filters_for
from distilforge.pipeline.sources import SeedSource
from distilforge.pipeline.steps import Filter, PipelineStep
from distilforge.quality import build_filters
from distilforge.quality.builtin import ExactDuplicate
from distilforge.quality.policy import SeedPolicy
from distilforge.quality.thinking import thinking_filters
from distilforge.schemas import JobConfig


@dataclass
class Pipeline:
    config: JobConfig
    steps: list[PipelineStep]  # stage 1, per rank; what comes out of the last step is kept
    global_filters: list[Filter]  # stage 2, over every rank's kept records in seed_id order
    source: PipelineStep | None = None  # the stream the steps start from (None: the first step makes its own)


def main_selection(config: JobConfig) -> SeedSelection:
    """The first pass works on every seed but the probe split (held apart when targeted rounds are on)."""
    if config.loop.rounds:
        return SeedSelection(probe=(config.loop.probe_fraction, config.generation.rng_seed))
    return SeedSelection()


def build_pipeline(config: JobConfig, selection: SeedSelection | None = None, *, round: int = 0,
                   first_sample: int = 0) -> Pipeline:
    """`round`, `first_sample`, `selection`: a targeted round's pipeline (new sample indices, its seeds)."""
    selection = selection if selection is not None else main_selection(config)
    g = config.generation
    quality, final = build_filters(config)
    thinking = config.train.format == "thinking"  # shapes dataset/'s messages even when train is off
    # `duplicate` runs after every other per-record filter: what it remembers was kept.
    tail: list[PipelineStep] = [*quality, ExactDuplicate()]
    if g.mode == "self-instruct":
        from distilforge.modes.self_instruct import SelfInstruct

        return Pipeline(config, [SelfInstruct(config), *filters_for(g.mode), *tail], final)
    if g.mode == "evol-instruct":
        from distilforge.modes.evol_instruct import EvolInstruct

        steps: list[PipelineStep] = [EvolInstruct(config, round=round), ParseAnswer(thinking),
                                     *filters_for("instruct"), *thinking_filters(config.thinking, False), *tail]
        # The seed instructions are evolved as text, whatever their answers look like.
        return Pipeline(config, steps, final, SeedSource(config, selection, answer_type="text"))
    from distilforge.modes.sampling import Generate

    steps = [Generate(config, round=round, first_sample=first_sample, selection=selection), ParseAnswer(thinking),
             *filters_for(g.mode),
             *thinking_filters(config.thinking, g.mode in ANSWERABLE), *tail]
    if g.self_consistency or g.keep != "all" or g.max_per_seed:
        steps.append(SeedPolicy(g))
    return Pipeline(config, steps, final, SeedSource(config, selection))


def expected_samples(config: JobConfig, n_seeds: int) -> int:
    """Samples the first pass asks for (`n_seeds`: the seeds it works on, the probe split left out)."""
    g = config.generation
    if g.mode == "self-instruct":
        return g.target_count
    if g.mode == "evol-instruct":
        return n_seeds * g.rounds * 2  # an evolution and an answer per instruction and round
    return n_seeds * g.samples_per_seed
