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
