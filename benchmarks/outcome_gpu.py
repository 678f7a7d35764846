"""The parts of benchmarks/outcome_gpu.sh: each prints one JSON line (a row of the final table) to --results.

    python benchmarks/outcome_gpu.py PART --results FILE [--smoke]
    PART: generate | train-qlora | train-full | gkd | outcome | table

- generate: the `vllm-offline` backend's generation tokens/s on the student-sized model (and, beside it,
  the `local` backend's, which needs no vLLM), on prompts of the symbolic tasks.
- train-qlora / train-full: distilforge's SFT trainer on controlled-teacher rationales of the shuffled-objects
  task; training tokens/s and the share of the GPU's peak bf16 dense FLOP/s reached (model FLOPs: 6 N per
  trained token for full fine-tuning, 4 N for (Q)LoRA, whose frozen weights get no gradient).
- gkd: TRL GKD with the embedded model as its own teacher (white-box), steps/s and tokens/s.
- outcome: benchmarks/outcome_cpu.py at a larger size (filters on, the product's defaults).
- table: the rows gathered so far as one table (parts that did not finish show why).

`--smoke` makes every part tiny so that it runs on a CPU in a minute or two (a check, not a measurement).
A part that cannot run (no vLLM, no bitsandbytes, no GPU) writes a row saying 'not available: REASON'.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}
STUDENT = "smollm2-135m-instruct"


def peak_flops() -> tuple[float | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name(0)
    for key, flops in PEAK_BF16.items():
        if key in name:
            return flops, name
    return None, name


def write_rows(run_dir: Path, task: str, n: int) -> None:
    """RUN_DIR/dataset from the controlled teacher's right rationales, in the chat form `distilforge run` writes."""
    import symbolic

    from distilforge.pipeline.dataset_writer import REJECTED_COLUMNS, write_dataset
    from distilforge.prompts import build_messages
    from distilforge.schemas import GenerationConfig
    from distilforge.schemas.records import Seed

    staging = run_dir / ".staging"
    staging.mkdir(parents=True, exist_ok=True)
    with (staging / "kept.jsonl").open("w") as fh:
        for i, item in enumerate(symbolic.items(task, n, seed=0)):
            text = symbolic.teacher_answer(task, item, 0, 1.0)
            seed = Seed(seed_id=f"{i:06d}", question=item.question, gold=item.gold, answer_type="choice", source="outcome_gpu")
            messages = [*build_messages(seed, GenerationConfig()), {"role": "assistant", "content": text}]
            record = {c: None for c in REJECTED_COLUMNS}
            record.update(seed_id=seed.seed_id, sample_index=0, question=item.question, rationale=text,
                          answer=item.gold, gold=item.gold, answer_type="choice", teacher_model="controlled",
                          mode="cot", prompt_tokens=0, completion_tokens=0, messages=messages)
            fh.write(json.dumps(record) + "\n")
    write_dataset([staging / "kept.jsonl"], run_dir, 0.0, 0)


def part_generate(args: argparse.Namespace) -> list[dict[str, Any]]:
    import symbolic

    from distilforge.prompts import build_messages
    from distilforge.schemas import GenerationConfig, TeacherConfig
    from distilforge.schemas.records import Seed
    from distilforge.teachers.local import LocalTeacher

    n = 8 if args.smoke else 2048
    max_tokens = 16 if args.smoke else 256
    prompts = [build_messages(Seed(seed_id=str(i), question=it.question, gold=it.gold, answer_type="choice", source="outcome_gpu"),
                              GenerationConfig()) for i, it in enumerate(symbolic.items("shuffled_objects", n, seed=3))]
    rows = []

    def measure(name: str, teacher: Any, count: int) -> dict[str, Any]:
        teacher.load()
        started = time.perf_counter()
        responses = teacher.generate_batch([(list(p), 1) for p in prompts[:count]])
        seconds = time.perf_counter() - started
        tokens = sum(r.completion_tokens for r in responses)
        return {"part": name, "value": f"{tokens / seconds:,.0f} generated tokens/s",
                "detail": f"{count} prompts, {tokens} tokens in {seconds:.1f} s, max_tokens {max_tokens}"}

    if importlib.util.find_spec("vllm") is None:
        rows.append({"part": "vllm-offline generation", "value": "not available: vllm is not installed"})
    else:
        from distilforge.teachers.vllm_offline import VllmOfflineTeacher

        config = TeacherConfig(backend="vllm-offline", model=STUDENT, batch_size=n,
                               params={"temperature": 0.7, "max_tokens": max_tokens},
                               engine_args={"gpu_memory_utilization": 0.5})
        rows.append(measure("vllm-offline generation", VllmOfflineTeacher(config), n))
    local = LocalTeacher(STUDENT, temperature=0.7, max_tokens=max_tokens, batch_size=4 if args.smoke else 256)
    rows.append(measure("local (transformers) generation", local, 8 if args.smoke else 512))
    return rows


def part_train(args: argparse.Namespace, method: str) -> list[dict[str, Any]]:
    import torch

    from distilforge.schemas import JobConfig
    from distilforge.trainers import train_student

    name = {"qlora": "QLoRA fine-tuning", "full": "full fine-tuning", "gkd": "GKD (white-box, self-teacher)"}[method]
    if method == "qlora" and (not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None):
        why = "no CUDA GPU" if not torch.cuda.is_available() else "bitsandbytes is not installed"
        return [{"part": name, "value": f"not available: {why}"}]
    run_dir = Path(tempfile.mkdtemp(prefix=f"gpu-{method}-"))
    write_rows(run_dir, "shuffled_objects", 16 if args.smoke else 4096)
    train: dict[str, Any] = {"enabled": True, "student": STUDENT, "method": method, "max_length": 512,
                             "max_steps": 2 if args.smoke else (16 if method == "gkd" else 200),
                             "batch_size": 2 if args.smoke else 32, "learning_rate": 1e-4}
    if method == "gkd":
        train["gkd"] = {"max_new_tokens": 8 if args.smoke else 64}
    config = JobConfig.model_validate({"seeds": {"path": str(run_dir)}, "teacher": {"backend": "local", "model": STUDENT},
                                       "train": train})
    summary = train_student(config, run_dir)
    tps = summary.get("tokens_per_second") or 0.0
    from transformers import AutoConfig

    from distilforge.models import resolve_model

    cfg = AutoConfig.from_pretrained(resolve_model(STUDENT))
    params = _params(cfg)
    peak, device = peak_flops()
    per_token = 6 if method == "full" else 4
    share = f"{tps * per_token * params / peak:.1%} of {device} peak bf16" if peak else f"peak unknown ({device})"
    return [{"part": name, "value": f"{tps:,.0f} train tokens/s, {share}",
             "detail": f"{summary['steps']} steps in {summary['seconds']:.0f} s, loss {summary.get('first_loss')} -> "
                       f"{summary.get('last_loss')}, {params / 1e6:.0f}M params, {per_token}N FLOPs/token"}]


def _params(cfg: Any) -> float:
    """Parameters of a Llama-shaped model from its config (embeddings tied)."""
    h, layers, inter, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    return layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + vocab * h


def part_outcome(args: argparse.Namespace) -> list[dict[str, Any]]:
    size = ["--train", "24", "--eval", "8"] if args.smoke else ["--train", "1000", "--eval", "300"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "outcome.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "outcome_cpu.py"), "--task", "shuffled_objects", *size,
               "--conditions", "filters on", "--json", str(out), "--eval-set", f"batch_size={8 if args.smoke else 128}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return [{"part": "outcome (shuffled objects)", "value": f"failed: {done.stderr.strip()[-300:]}"}]
        task = json.loads(out.read_text())["tasks"][0]
    base, after = task["rows"][0], task["rows"][-1]
    d = after["vs_base"]
    return [{"part": f"outcome: shuffled objects, {task['train']} train / {task['eval']} held out",
             "value": f"{base['accuracy']:.1%} -> {after['accuracy']:.1%}, gain {d['difference'] * 100:+.1f} points "
                      f"(95% CI {d['ci95'][0] * 100:+.1f} to {d['ci95'][1] * 100:+.1f})",
             "detail": f"controlled teacher at 60%, filters on, {task['minutes']} min"}]


def part_table(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()] \
        if Path(args.results).exists() else []
    width = max([len(r["part"]) for r in rows] + [4])
    lines = [f"| {'part'.ljust(width)} | result | detail |", f"| {'-' * width} | --- | --- |"]
    lines += [f"| {r['part'].ljust(width)} | {r['value']} | {r.get('detail', '')} |" for r in rows]
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["generate", "train-qlora", "train-full", "gkd", "outcome", "table"])
    parser.add_argument("--results", required=True, help="JSON lines, one per table row (appended)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: a CPU check of the code path")
    args = parser.parse_args()
    if args.part == "table":
        part_table(args)
        return
    labels = {"generate": "generation", "train-qlora": "QLoRA fine-tuning", "train-full": "full fine-tuning",
              "gkd": "GKD (white-box, self-teacher)", "outcome": "outcome (shuffled objects)"}
    started = time.perf_counter()
    try:
        if args.part == "generate":
            rows = part_generate(args)
        elif args.part == "outcome":
            rows = part_outcome(args)
        else:
            rows = part_train(args, {"train-qlora": "qlora", "train-full": "full", "gkd": "gkd"}[args.part])
    except Exception as exc:  # one failed part must not hide the others: it becomes its row
        rows = [{"part": labels[args.part], "value": f"failed: {type(exc).__name__}: {str(exc)[:200]}"}]
    for row in rows:
        row.setdefault("detail", "")
        row["detail"] = (row["detail"] + f"; part {time.perf_counter() - started:.0f} s").lstrip("; ")
    with open(args.results, "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    print("\n".join(f"{r['part']}: {r['value']}" for r in rows), flush=True)
    sys.stderr.flush()
    os._exit(0)  # the row is written: do not wait on the libraries' worker threads at exit


if __name__ == "__main__":
    main()
