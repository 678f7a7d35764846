"""White-box distillation: TRL's generalized knowledge distillation (GKD, Agarwal et al. 2024).

When the teacher is an open model that shares the student's tokenizer, the student learns from the
teacher's whole next-token distribution on the same prompts, not only from its sampled answers:
each step the loss is the generalized Jensen-Shannon divergence (`beta`) between the two
distributions over the completion tokens. With probability `lmbda` the completion is the student's
own sample (on-policy, `temperature`, `max_new_tokens`); otherwise it is the kept teacher answer from
RUN_DIR/dataset (or, with `seq_kd`, a fresh teacher sample).

The student trains a LoRA adapter (`train.lora`) by default, or all its weights with
`train.gkd.lora: false`; RUN_DIR/student and loss.json are written as for SFT, so eval, report and
publish are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilforge.schemas import JobConfig
from distilforge.trainers.sft import (
    CHATML,
    DEFAULT_LR,
    TrainError,
    fit_and_save,
    start_point,
    training_arguments,
    training_examples,
)

API_BACKENDS = ("openai", "vllm")


def gkd_teacher(config: JobConfig) -> str:
    """The model whose logits teach: `train.gkd.teacher`, else the job's local teacher."""
    if config.train.gkd.teacher:
        return config.train.gkd.teacher
    if config.teacher.backend in API_BACKENDS:
        raise TrainError("train.method gkd needs the teacher's logits: an API teacher has none; give "
                         "train.gkd.teacher: a local model that shares the student's tokenizer")
    return config.teacher.model


def check_gkd(config: JobConfig) -> None:
    """Refuse GKD before anything is written: no local teacher, or teacher and student tokenizers differ.

    Only the tokenizers are loaded; vocabularies match when they have the same tokens with the same ids.
    """
    from distilforge.models import check_model
    from distilforge.models.tokenizer import load_tokenizer, vocabulary

    teacher, student = gkd_teacher(config), config.train.student
    try:
        check_model(teacher)
    except Exception as exc:
        raise TrainError(f"train.gkd.teacher: {exc}") from None
    (n_teacher, h_teacher), (n_student, h_student) = (vocabulary(load_tokenizer(m)) for m in (teacher, student))
    if (n_teacher, h_teacher) != (n_student, h_student):
        how = f"{n_teacher} vs {n_student} tokens" if n_teacher != n_student else "same size, different token ids"
        raise TrainError(f"train.method gkd needs one tokenizer for teacher and student: teacher {teacher} and "
                         f"student {student} have different vocabularies ({how}); pick a teacher from the student's "
                         "family, or train black-box with train.method lora or full")


def trl_gkd() -> tuple[Any, Any]:
    """TRL's (GKDConfig, GKDTrainer): in `trl.experimental.gkd` since TRL 1.0 (importing it warns every
    run, so the warning is silenced), in `trl` itself before."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:  # pragma: no cover - older TRL
        from trl import GKDConfig, GKDTrainer
    return GKDConfig, GKDTrainer


def _chat_template(student: Any, teacher: Any, notes: list[str]) -> None:
    """A base student without a chat template borrows the teacher's, else ChatML as plain text: new
    special tokens would break the one shared vocabulary."""
    if student.chat_template:
        return
    if teacher.chat_template:
        student.chat_template = teacher.chat_template
        notes.append("the student had no chat template: the teacher's is used")
    else:
        student.chat_template = CHATML
        notes.append("neither model has a chat template: ChatML as plain text (no new tokens)")


def build_gkd_trainer(config: JobConfig, run_dir: Path, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """The configured GKDTrainer over RUN_DIR/dataset's prompts, ready to train, and facts for run.json."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distilforge.models import resolve_model

    GKDConfig, _ = trl_gkd()
    t, g = config.train, config.train.gkd
    examples = training_examples(config, run_dir)
    # TRL's GKD collator reads whole conversations (`messages`): the prompt is all but the last turn.
    ds = datasets.Dataset.from_list([{"messages": [*e["prompt"], *e["completion"]]} for e in examples])
    teacher_spec = gkd_teacher(config)
    started = time.monotonic()
    model_path, adapter = start_point(config, run_dir, resume)
    teacher_path = resolve_model(teacher_spec)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    notes: list[str] = []
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    _chat_template(tokenizer, AutoTokenizer.from_pretrained(teacher_path), notes)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=dtype)
    student_rows = model.config.get_text_config().vocab_size
    if teacher.config.get_text_config().vocab_size != student_rows:
        # One tokenizer, embedding matrices padded to different sizes (as within the Qwen family): the
        # padding rows are never produced by the tokenizer, so the teacher's are cut (or padded) to match.
        teacher.resize_token_embeddings(student_rows)
        notes.append(f"the teacher's embedding rows were resized to the student's {student_rows}")
    rate = t.learning_rate or DEFAULT_LR["lora" if g.lora else "full"]
    config = config.model_copy(update={"train": t.model_copy(update={"learning_rate": rate})})
    args = GKDConfig(
        **training_arguments(config, run_dir, bf16=bf16, on_gpu=on_gpu),
        lmbda=g.lmbda,
        beta=g.beta,
        temperature=g.temperature,
        max_new_tokens=g.max_new_tokens,
        seq_kd=g.seq_kd,
    )
    peft_config = None
    if adapter is not None:  # a targeted round continues from the last adapter
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        notes.append("continued from the previous round's adapter")
    elif g.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                                 target_modules=t.lora.target_modules, task_type="CAUSAL_LM")
    trainer = _gkd_trainer_class()(model=model, teacher_model=teacher, args=args, train_dataset=ds,
                                   processing_class=tokenizer, peft_config=peft_config)
    facts = {"student": t.student, "method": "gkd", "format": t.format, "examples": len(ds),
             "teacher": teacher_spec, "lora": peft_config is not None or adapter is not None,
             "gkd": {"lmbda": g.lmbda, "beta": g.beta, "temperature": g.temperature,
                     "max_new_tokens": g.max_new_tokens, "seq_kd": g.seq_kd},
             "device": "cuda" if on_gpu else "cpu", "bf16": bf16, "packing": False, "notes": notes,
             "started": started}
    return trainer, facts


def _gkd_trainer_class() -> Any:
    """Built on first use: importing TRL is slow."""
    _, GKDTrainer = trl_gkd()

    class Counting(GKDTrainer):
        """GKDTrainer that logs the running token count (SFT's `num_tokens`), on-policy samples included."""

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            loss = super().training_step(model, inputs, num_items_in_batch)  # replaces the inputs when on-policy
            self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return Counting


def train_student_gkd(config: JobConfig, run_dir: Path, should_stop: Callable[[], bool] | None = None,
                      resume: bool = False) -> dict[str, Any]:
    trainer, facts = build_gkd_trainer(config, run_dir, resume)
    return fit_and_save(trainer, facts, run_dir, should_stop)
