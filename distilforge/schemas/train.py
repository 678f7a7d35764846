"""`train:`: the student and how it is trained (SFT with LoRA/QLoRA/full weights, or GKD)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilforge.schemas.base import EMBEDDED_STUDENT, Strict


class LoraConfig(Strict):
    r: int = Field(default=16, ge=1, description="adapter rank")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling alpha")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapter")
    target_modules: str | list[str] = Field(
        default="all-linear", description="modules that get an adapter (peft's target_modules)")


class GKDSettings(Strict):
    """White-box distillation (TRL's generalized KD) from a local teacher that shares the student's tokenizer."""

    lmbda: float = Field(
        default=0.5, ge=0, le=1, description="share of steps on the student's own samples (on-policy)")
    beta: float = Field(default=0.5, ge=0, le=1, description="generalized JSD: 0 forward KL, 1 reverse KL")
    temperature: float = Field(default=0.9, gt=0, description="sampling temperature of on-policy generations")
    max_new_tokens: int = Field(default=128, ge=1, description="tokens per on-policy generation")
    seq_kd: bool = Field(default=False, description="off-policy steps train on the teacher's own samples")
    teacher: str | None = Field(default=None, description="local model folder, .gguf or alias; default: "
                                                          "teacher.model when teacher.backend is local/vllm-offline")
    lora: bool = Field(
        default=True, description="train a LoRA adapter (train.lora) on the student; false: all weights")


class TrainConfig(Strict):
    enabled: bool = Field(
        default=False, description="train a student after the data stage (false: stop at the dataset)")
    format: Literal["chat", "step-by-step", "thinking"] = Field(
        default="chat", description="thinking: the answer turn is <think>\\n{reasoning}\\n</think>\\n\\n{answer}")
    alpha: float = Field(default=0.5, gt=0, lt=1, description="step-by-step: share of label-task examples")
    student: str = Field(
        default=EMBEDDED_STUDENT, description="the student: an alias, local folder, .gguf file or Hub id")
    method: Literal["auto", "lora", "full", "qlora", "gkd"] = Field(
        default="auto", description="auto (default): full fine-tuning for students under 1B parameters, LoRA above; "
        "chosen by docs/outcome.md's runs, where LoRA learned only the teacher's format")
    max_steps: int = Field(default=-1, description="-1: run `epochs` instead")
    epochs: float = Field(default=1.0, gt=0, description="passes over the dataset when max_steps is -1")
    learning_rate: float | None = Field(
        default=None, gt=0, description="unset: 1e-4 for full fine-tuning, 2e-4 for (Q)LoRA")
    batch_size: int = Field(default=4, ge=1, description="examples per device per step")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="steps accumulated per optimizer update")
    max_length: int | None = Field(default=None, ge=16, description="tokens per example; default: the longest "
                                                                       "kept example, up to max_length_cap")
    max_length_cap: int = Field(default=8192, ge=16, description="the default max_length's ceiling")
    packing: bool = Field(default=False, description="pack examples (needs FlashAttention on a GPU; else padded)")
    gradient_checkpointing: bool = Field(default=False, description="recompute activations to save memory (slower)")
    lr_scheduler: str = Field(default="cosine", description="linear | cosine | constant | ...")
    warmup_steps: int = Field(default=0, ge=0, description="learning-rate warmup steps")
    seed: int = Field(default=0, description="training seed (also the step-by-step example mix)")
    lora: LoraConfig = Field(
        default=LoraConfig(), description="LoRA adapter settings (method lora, qlora, auto above 1B, gkd with"
                                          " gkd.lora)")
    gkd: GKDSettings = Field(default=GKDSettings(), description="method gkd: white-box distillation settings")
