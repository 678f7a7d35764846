"""Train the packaged SmolLM2-135M-Instruct on GSM8K gold rationales and evaluate it on GSM8K test, on a GPU.

Run (GPU machine): python benchmarks/train_gpu.py [--train-rows 7473] [--epochs 1] [--eval-rows 1319]
        CPU smoke run: python benchmarks/train_gpu.py --allow-cpu --train-rows 16 --max-steps 2 --eval-rows 8

Builds a run folder whose dataset is GSM8K train's gold solutions in the chain-of-thought chat format
distilforge produces, then runs distilforge's own trainer (TRL SFTTrainer, LoRA by default) and its
evaluation (batched greedy generation, same answer parser). Prints wall time, training tokens/s, peak
GPU memory and accuracy before/after with 95% intervals.
"""

from __future__ import annotations

import os

# Our own tables say what is happening; the libraries' per-shard bars only add noise.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "gsm8k"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=7473)
    parser.add_argument("--eval-rows", type=int, default=1319)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--method", default="lora", choices=["lora", "full"])
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--allow-cpu", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no GPU here: this benchmark is for a GPU machine (use --allow-cpu for a tiny smoke run)")
    from distilforge.evaluation import evaluate_model, load_eval_questions
    from distilforge.pipeline.dataset_writer import REJECTED_COLUMNS, write_dataset
    from distilforge.prompts import render
    from distilforge.schemas import JobConfig
    from distilforge.trainers import train_student

    run_dir = args.out or Path(tempfile.mkdtemp(prefix="train-gpu-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(x) for x in (DATA / "train.jsonl").read_text().splitlines()[: args.train_rows]]
    staging = run_dir / ".staging"
    staging.mkdir(exist_ok=True)
    with (staging / "kept.jsonl").open("w") as fh:
        for i, row in enumerate(rows):
            body, final = row["answer"].rsplit("####", 1)
            rationale = body.replace("<<", " ").replace(">>", " ").strip()
            prompt = render("cot.jinja", question=row["question"], answer_hint="a number")
            record = {c: None for c in REJECTED_COLUMNS}
            record.update(seed_id=f"{i:06d}", sample_index=0, question=row["question"], rationale=rationale,
                          answer=final.strip().replace(",", ""), gold=final.strip(), answer_type="number",
                          teacher_model="gsm8k-gold", mode="cot", prompt_tokens=0, completion_tokens=0,
                          messages=[{"role": "user", "content": prompt},
                                    {"role": "assistant", "content": f"{rationale}\nThe answer is {final.strip()}."}])
            fh.write(json.dumps(record) + "\n")
    write_dataset([staging / "kept.jsonl"], run_dir, 0.0, 0)
    config = JobConfig.model_validate({
        "seeds": {"path": str(DATA / "train.jsonl")},
        "train": {"enabled": True, "student": "smollm2-135m-instruct", "method": args.method, "epochs": args.epochs,
                  "max_steps": args.max_steps, "batch_size": args.batch_size, "max_length": 512,
                  "learning_rate": 2e-4 if args.method == "lora" else 2e-5},
        "eval": {"files": [{"path": str(DATA / "test.jsonl"), "name": "gsm8k-test", "limit": args.eval_rows}],
                 "max_tokens": 320, "batch_size": args.eval_batch, "include_validation": False},
    })
    console = Console()
    questions = load_eval_questions(config)
    started = time.monotonic()
    before = evaluate_model(config, questions, model="smollm2-135m-instruct", label="before", console=console)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train = train_student(config, run_dir)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    adapter = str(run_dir / "student") if args.method == "lora" else None
    after = evaluate_model(config, questions, model="smollm2-135m-instruct" if adapter else str(run_dir / "student"),
                           adapter=adapter, label="after", console=console)
    table = Table(title=f"SmolLM2-135M on GSM8K ({train['device']}, {args.method}, {len(rows)} train rows)")
    for col in ("what", "value"):
        table.add_column(col)
    table.add_row("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
    table.add_row("train steps / wall", f"{train['steps']} / {train['seconds']:.0f} s")
    table.add_row("train tokens/s", str(train.get("tokens_per_second")))
    table.add_row("peak GPU memory (training)", f"{peak:.2f} GiB")
    for name, block in (("before", before), ("after", after)):
        table.add_row(f"accuracy {name} (n={block['n']})",
                      f"{block['accuracy']:.1%} (95% CI {block['ci95'][0]:.1%}-{block['ci95'][1]:.1%}), eval {block['seconds']:.0f} s")
    table.add_row("total wall", f"{time.monotonic() - started:.0f} s")
    console.print(table)


if __name__ == "__main__":
    main()
