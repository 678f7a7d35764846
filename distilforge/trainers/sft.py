"""Supervised fine-tuning of the student on the kept records with TRL's SFTTrainer.

Rows are `messages` [user, assistant]; they are handed to TRL as a conversational prompt/completion
pair so the loss falls on the teacher's answer only (SmolLM2's chat template has no `{% generation %}`
markers, so `assistant_only_loss` on `messages` is refused).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from distilforge.schemas.config import JobConfig
from distilforge.trainers.formats import chat_example, step_by_step_examples


class TrainError(RuntimeError):
    """Training cannot start (no dataset, nothing kept); the message says what to do."""


def train_student(config: JobConfig, run_dir: Path) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distilforge.models import resolve_model

    dataset_dir = run_dir / "dataset"
    if not dataset_dir.exists():
        raise TrainError(f"{run_dir}: no dataset yet; run `distilforge generate` first")
    ds = datasets.load_from_disk(str(dataset_dir))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"]
    if len(ds) == 0:
        raise TrainError(f"{dataset_dir}: no kept records to train on (see run.json 'rejected')")
    t = config.train
    if t.format == "step-by-step":
        examples = step_by_step_examples(ds.select_columns(["messages", "answer", "rationale"]).to_list(), t.alpha, t.seed)
        if not examples:
            raise TrainError(f"{dataset_dir}: train.format step-by-step needs rows with answers and rationales")
        ds = datasets.Dataset.from_list(examples)
    else:
        ds = ds.map(chat_example, remove_columns=ds.column_names)

    started = time.monotonic()
    model_path = resolve_model(t.student)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32)

    out_dir = run_dir / "student"
    args = SFTConfig(
        output_dir=str(run_dir / ".checkpoints"),
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_length,
        seed=t.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        # TRL defaults to bf16; CPUs train in fp32.
        bf16=bf16,
        fp16=False,
        use_cpu=not on_gpu,
        completion_only_loss=True,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        dataset_num_proc=None,
    )
    peft_config = None
    if t.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
            target_modules=t.lora.target_modules, task_type="CAUSAL_LM",
        )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=peft_config)
    result = trainer.train()
    tmp = out_dir.with_name("student.tmp")
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    import shutil

    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(run_dir / ".checkpoints", ignore_errors=True)
    losses = [{"step": h["step"], "loss": round(float(h["loss"]), 4)} for h in trainer.state.log_history if "loss" in h]
    (out_dir / "loss.json").write_text(json.dumps(losses, indent=1))
    return {
        "student": t.student,
        "method": t.method,
        "format": t.format,
        "examples": len(ds),
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "device": "cuda" if on_gpu else "cpu",
        "seconds": round(time.monotonic() - started, 2),
        "output": "student",
    }
