"""Supervised fine-tuning of the student on the kept records with TRL's SFTTrainer.

Rows are `messages` [user, assistant]; they are handed to TRL as a conversational prompt/completion
pair so the loss falls on the teacher's answer only (SmolLM2's chat template has no `{% generation %}`
markers, so `assistant_only_loss` on `messages` is refused).
"""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distilforge.core.formats import chat_example, step_by_step_examples, thinking_example
from distilforge.schemas import JobConfig

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> tuple[bool, bool]:
    """Give a base model's tokenizer the ChatML template; returns (template added, new tokens added)."""
    if tokenizer.chat_template:
        return False, False
    tokenizer.chat_template = CHATML
    added = tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    return True, added > 0


class TrainError(RuntimeError):
    """Training cannot start (no dataset, nothing kept); the message says what to do."""


def native_thinking(tokenizer: Any) -> bool:
    """The student's chat template has its own thinking convention (it renders `reasoning_content`)."""
    return "reasoning_content" in str(tokenizer.chat_template or "")


def training_examples(config: JobConfig, run_dir: Path, tokenizer: Any = None) -> Any:
    """RUN_DIR/dataset's train split as conversational prompt/completion examples (`train.format`)."""
    import datasets

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
        return datasets.Dataset.from_list(examples)
    if t.format == "thinking":
        native = tokenizer is not None and native_thinking(tokenizer)
        return ds.map(thinking_example, fn_kwargs={"native": native}, remove_columns=ds.column_names)
    return ds.map(chat_example, remove_columns=ds.column_names)


def fit_max_length(config: JobConfig, ds: Any, tokenizer: Any) -> tuple[int, int, int]:
    """(max_length, longest example, examples cut): `train.max_length` if set, else the longest kept example
    up to `train.max_length_cap`, so long traces are not cut silently."""
    t = config.train
    longest, lengths = 0, []
    for example in ds:
        ids = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=True)
        length = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        lengths.append(length)
        longest = max(longest, length)
    limit = t.max_length if t.max_length is not None else max(16, min(longest, t.max_length_cap))
    return limit, longest, sum(1 for n in lengths if n > limit)


def start_point(config: JobConfig, run_dir: Path, resume: bool) -> tuple[str, Path | None]:
    """(model to load, LoRA adapter to continue): the base student, or with `resume` RUN_DIR/student."""
    from distilforge.models import resolve_model

    previous = run_dir / "student"
    adapter = previous if resume and (previous / "adapter_config.json").exists() else None
    if resume and adapter is None and (previous / "config.json").exists():
        return str(previous), None
    return resolve_model(config.train.student), adapter


FULL_BELOW_PARAMS = 1_000_000_000
"""`train.method: auto` fine-tunes every weight of a student smaller than this, and a LoRA adapter above."""
DEFAULT_LR = {"full": 1e-4, "lora": 2e-4, "qlora": 2e-4}
"""`train.learning_rate` when unset, by method (see README, Training: how the defaults were chosen)."""


def settle_method(config: JobConfig, n_params: int, adapter: Path | None) -> JobConfig:
    """`train.method: auto` and an unset `learning_rate` made concrete for this student.

    auto: full fine-tuning below FULL_BELOW_PARAMS (a few hundred rows on a CPU do not teach a LoRA adapter of a
    135M model a new skill in one pass; see README), LoRA above; a round that continues an adapter stays LoRA.
    """
    t = config.train
    method = t.method
    if method == "auto":
        method = "lora" if adapter is not None or n_params >= FULL_BELOW_PARAMS else "full"
    rate = t.learning_rate or DEFAULT_LR.get(method, DEFAULT_LR["lora"])
    return config.model_copy(update={"train": t.model_copy(update={"method": method, "learning_rate": rate})})


def _checkpointing_key() -> str:
    """transformers renamed `gradient_checkpointing` to `activation_checkpointing` within 5.x: use what is installed."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def training_arguments(config: JobConfig, run_dir: Path, *, bf16: bool, on_gpu: bool,
                       max_length: int | None = None) -> dict[str, Any]:
    """The `train:` options every TRL trainer here shares (SFT and GKD take the same schedule)."""
    t = config.train
    return {
        "output_dir": str(run_dir / ".checkpoints"),
        "max_steps": t.max_steps,
        "num_train_epochs": t.epochs,
        "learning_rate": t.learning_rate,
        "per_device_train_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_length": max_length or t.max_length or 1024,
        "seed": t.seed,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        # TRL defaults to bf16; CPUs train in fp32.
        "bf16": bf16,
        "fp16": False,
        "use_cpu": not on_gpu,
        _checkpointing_key(): t.gradient_checkpointing,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_steps,
        "dataset_num_proc": None,
    }


def build_trainer(config: JobConfig, run_dir: Path, resume: bool = False) -> tuple[Any, dict[str, Any]]:
    """The configured SFTTrainer over RUN_DIR/dataset, ready to train, and facts for run.json.

    `resume`: continue from RUN_DIR/student (its LoRA adapter, or the full model) instead of the base.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    t = config.train
    started = time.monotonic()
    model_path, adapter = start_point(config, run_dir, resume)
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    if t.method == "qlora" and (not on_gpu or importlib.util.find_spec("bitsandbytes") is None):
        raise TrainError("train.method qlora needs a CUDA GPU and bitsandbytes (pip install bitsandbytes); "
                         "use method: lora on this machine")
    flash = on_gpu and importlib.util.find_spec("flash_attn") is not None
    notes: list[str] = []
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    templated, added = ensure_chat_template(tokenizer)
    if templated:
        notes.append("the student had no chat template: ChatML added" + (" with new tokens" if added else ""))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ds = training_examples(config, run_dir, tokenizer)
    max_length, longest, cut = fit_max_length(config, ds, tokenizer)
    if cut:
        notes.append(f"{cut} of {len(ds)} examples are longer than max_length {max_length} and were cut")
    if t.format == "thinking" and native_thinking(tokenizer):
        notes.append("the think block goes into the chat template's reasoning_content")
    load: dict[str, Any] = {"dtype": torch.bfloat16 if bf16 else torch.float32}
    if t.method == "qlora":
        from transformers import BitsAndBytesConfig

        load["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                         bnb_4bit_compute_dtype=torch.bfloat16 if bf16 else torch.float16)
    if t.packing and flash:
        load["attn_implementation"] = "flash_attention_2"
    model = AutoModelForCausalLM.from_pretrained(model_path, **load)
    if added:
        model.resize_token_embeddings(len(tokenizer))
    packing = t.packing and flash
    if t.packing and not flash:
        # Padding-free packing relies on FlashAttention's per-sequence boundaries; without it packed
        # examples would attend to each other, so they are padded instead.
        notes.append("packing needs FlashAttention on a GPU; trained padded instead")
    config = settle_method(config, model.num_parameters(), adapter)
    t = config.train

    args = SFTConfig(
        **training_arguments(config, run_dir, bf16=bf16, on_gpu=on_gpu, max_length=max_length),
        completion_only_loss=True,
        packing=packing,
        packing_strategy="bfd",
        padding_free=packing,
    )
    peft_config = None
    if adapter is not None:  # a targeted round continues from the last adapter
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        notes.append("continued from the previous round's adapter")
    elif t.method in ("lora", "qlora"):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
            target_modules=t.lora.target_modules, task_type="CAUSAL_LM",
            # New chat tokens need trainable embeddings, or the adapter cannot learn them.
            modules_to_save=["embed_tokens", "lm_head"] if added else None,
        )
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer,
                         peft_config=peft_config)
    facts = {"student": t.student, "method": t.method, "learning_rate": t.learning_rate, "epochs": t.epochs,
             "format": t.format, "examples": len(ds), "max_length": max_length, "longest_example_tokens": longest,
             "examples_cut": cut, "device": "cuda" if on_gpu else "cpu", "bf16": bf16, "packing": packing,
             "notes": notes, "started": started}
    return trainer, facts


def _stop_callback(should_stop: Callable[[], bool]) -> Any:
    """Checked at every step: a cancelled job stops training within one step, not at the end."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if should_stop():
                control.should_training_stop = True
            return control

    return Stop()


def _log_callback(console: Any) -> Any:
    """Without a terminal: a formatted line every 10 s (step, loss, learning rate), not raw log dicts."""
    from transformers import TrainerCallback

    from distilforge.pipeline.progress import LogLines

    class Lines(TrainerCallback):
        def __init__(self) -> None:
            self.lines: LogLines | None = None
            self.last: dict[str, Any] = {}

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero:
                return
            self.last = {**self.last, **{k: v for k, v in (logs or {}).items() if k in ("loss", "learning_rate")}}
            if self.lines is None:
                self.lines = LogLines(console, "training", state.max_steps, "steps")
            self.lines.update(state.global_step, self._extra())

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.lines is not None and state.is_world_process_zero:
                self.lines.update(state.global_step, self._extra(), final=True)

        def _extra(self) -> str:
            loss, lr = self.last.get("loss"), self.last.get("learning_rate")
            return (f", loss {float(loss):.4f}" if loss is not None else "") + (
                f", lr {float(lr):.2e}" if lr is not None else "")

    return Lines()


def quiet_trainer_logs(trainer: Any, console: Any) -> None:
    """In a log (no terminal), HF's bar and its raw dicts give way to formatted lines every 10 s."""
    if console.is_terminal:
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_log_callback(console))


class TrainingStopped(RuntimeError):
    """Training was stopped (a cancelled job or a lost lease); nothing was saved."""


def train_student(config: JobConfig, run_dir: Path, should_stop: Callable[[], bool] | None = None,
                  resume: bool = False) -> dict[str, Any]:
    trainer, facts = build_trainer(config, run_dir, resume)
    return fit_and_save(trainer, facts, run_dir, should_stop)


def fit_and_save(trainer: Any, facts: dict[str, Any], run_dir: Path,
                 should_stop: Callable[[], bool] | None = None, console: Any = None) -> dict[str, Any]:
    """Train (stopping within a step when `should_stop`), then write RUN_DIR/student and its loss.json."""
    import shutil

    from rich.console import Console

    quiet_trainer_logs(trainer, console or Console(stderr=True))
    if should_stop is not None:
        trainer.add_callback(_stop_callback(should_stop))
    started = facts.pop("started")
    result = trainer.train()
    if should_stop is not None and should_stop():
        shutil.rmtree(run_dir / ".checkpoints", ignore_errors=True)
        raise TrainingStopped("training stopped before the end: the student was not saved")
    out_dir = run_dir / "student"
    tmp = out_dir.with_name("student.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    trainer.processing_class.save_pretrained(str(tmp))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(run_dir / ".checkpoints", ignore_errors=True)
    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": round(float(h["loss"]), 4)} for h in history if "loss" in h]
    (out_dir / "loss.json").write_text(json.dumps(losses, indent=1))
    seconds = time.monotonic() - started
    tokens = max((float(h["num_tokens"]) for h in history if "num_tokens" in h), default=0.0)  # TRL logs a running total
    return {
        **facts,
        "steps": trainer.state.global_step,
        "train_loss": round(result.training_loss, 4),
        "first_loss": losses[0]["loss"] if losses else None,
        "last_loss": losses[-1]["loss"] if losses else None,
        "tokens_per_second": round(tokens / seconds, 1) if tokens else None,
        "seconds": round(seconds, 2),
        "output": "student",
    }
