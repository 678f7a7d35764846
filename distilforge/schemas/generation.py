"""`generation:`: how seeds become teacher prompts, one of five modes, and which samples are kept."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilforge.schemas.base import Strict
from distilforge.schemas.seeds import SeedFields

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
    fields: SeedFields = Field(default=SeedFields(), description="the pool's fields (as seeds.fields)")
    k: int = Field(default=4, ge=1, description="demonstrations per prompt")
    selection: Literal["random", "nearest"] = Field(
        default="random", description="random, or nearest by MiniLM embedding of the question")
    student_format: Literal["zero-shot", "in-context"] = Field(
        default="zero-shot", description="zero-shot: the student sees no demonstrations; in-context: it sees "
                                         "them as the teacher did")


class AdaptiveConfig(Strict):
    agree: int = Field(default=3, ge=2, description="stop once this many answers agree (no gold)")
    batch: int | None = Field(default=None, ge=1, description="samples per round (default: agree)")


class GenerationConfig(Strict):
    mode: Mode = Field(
        default="cot", description="cot: reasoning then answer; icl: cot with k demonstrations; instruct: "
                                   "instruction -> output; self-instruct and evol-instruct: new instructions "
                                   "generated from the seeds")
    samples_per_seed: int = Field(
        default=1, ge=1, description="teacher samples asked per seed (n per request where the teacher "
                                     "supports it)")
    answer_type: Literal["auto", "number", "yes_no", "choice", "text"] = Field(
        default="auto", description="how gold answers are compared: auto infers it per gold (number, yes_no, "
                                    "choice, text)")
    template: str | None = Field(default=None, description="Jinja2 file; default: the mode's own")
    system_prompt: str | None = Field(
        default=None, description="a system turn for the teacher only (not the student), unless a seed brings"
                                  " its own")
    student_prompt: Literal["question", "template"] = Field(
        default="question", description="what the student is trained (and evaluated) on: question: the bare "
                                        "question, as users will ask it; template: the teacher's prompt (the "
                                        "mode's template, without ICL demonstrations unless icl.student_format "
                                        "is in-context)")
    keep: Literal["all", "one", "distinct"] = Field(
        default="all", description="per seed after the filters: all samples, one, or distinct answers up to "
                                   "max_per_seed")
    max_per_seed: int | None = Field(default=None, ge=1, description="with keep: distinct")
    self_consistency: bool = Field(default=False, description="no gold: keep rationales that agree with the majority")
    adaptive: AdaptiveConfig | None = Field(
        default=None, description="cot, no gold: sample in rounds until `agree` answers agree, instead of "
                                  "samples_per_seed at once")
    icl: IclConfig = Field(
        default=IclConfig(), description="mode icl: where demonstrations come from and how they are chosen")
    target_count: int = Field(default=100, ge=1, description="self-instruct: instructions to collect")
    proposals_per_round: int = Field(default=16, ge=1, description="self-instruct: requests per round")
    rouge_threshold: float = Field(default=0.7, gt=0, le=1, description="self-instruct: keep below this ROUGE-L")
    rounds: int = Field(default=1, ge=1, description="evol-instruct: evolution rounds")
    rng_seed: int = Field(
        default=0, description="salts every seeded choice: validation and probe splits, ICL demonstrations, "
                               "self/evol-instruct picks")

    @property
    def template_name(self) -> str:
        return self.template or DEFAULT_TEMPLATES[self.mode]
