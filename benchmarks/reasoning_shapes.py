"""Reasoning teachers, shape by shape: what is kept, what is rejected and why, the trace bytes kept, and
the server's reasoning and cached tokens beside run.json's. Also the 16k-token answer at 40 tokens/s.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/reasoning_shapes.py [--seeds 40] [--time-scale 0.01]

Each shape runs the same seeds through `distilforge run` (a subprocess, as a user runs it) against the
fake server (tests/fake_openai.py): a mix of finished traces, traces cut by max_completion_tokens,
loops, another language and an answer the trace does not support, with a shared system prompt the
server's prompt cache bills as cached input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fake_openai import Behaviour, FakeOpenAI

SHAPES = ("reasoning_content", "reasoning", "think", "think_no_open", "hidden")
ANSWER = "36 eggs at $0.50 each cost $18.\nThe answer is 18."
TRACES = {
    "fine": "\nThree dozen is 36 eggs.\n\n36 times $0.50 is $18.\nSo the answer is 18.\n",
    "cut": " ".join(f"thought{i}" for i in range(300)),
    "loop": "Wait, let me check the sum again. " * 12 + "The answer is 18.",
    "mixed": "三打鸡蛋是三十六个鸡蛋，每个五毛钱，所以一共是十八美元。" * 3 + " The answer is 18.",
    "unsupported": "36 * 0.5 = 17. So the answer is 17.",
}
PRICES = {"input_per_million": 0.56, "output_per_million": 1.68, "cached_input_per_million": 0.07}


def run_shape(shape: str, seeds: int, work: Path, *, stream: bool) -> dict:
    fake = FakeOpenAI(prompt_cache=True)
    kinds = list(TRACES)
    fake.script = {f"[{k}]": Behaviour([ANSWER], reasoning=[TRACES[k]], shape=shape) for k in kinds}
    url = fake.start()
    try:
        rows = [{"question": f"[{kinds[i % len(kinds)]}] #{i}: Tim buys 3 dozen eggs at $.50 each. How much?",
                 "answer": "#### 18"} for i in range(seeds)]
        seeds_path = work / f"{shape}-{stream}.jsonl"
        seeds_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        job = {"seeds": {"path": str(seeds_path), "fields": {"question": "question", "answer": "answer"}},
               "teacher": {"backend": "openai", "model": "deepseek-reasoner", "base_url": url, "api_key_env": None,
                           "stream": stream, "params": {"max_completion_tokens": 200}},
               "generation": {"mode": "cot", "system_prompt": "You are a careful teacher. Think it through, then "
                                                               "state the final answer."},
               "budget": {"prices": PRICES}, "train": {"format": "thinking"}}
        config = work / f"{shape}-{stream}.yaml"
        config.write_text(yaml.safe_dump(job))
        out = work / f"run-{shape}-{'stream' if stream else 'plain'}"
        done = subprocess.run([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stdout + done.stderr
        run = json.loads((out / "run.json").read_text())
        import datasets

        splits = datasets.load_from_disk(str(out / "dataset"))
        trace_bytes = sum(len((r or "").encode()) for s in splits.values() for r in s["reasoning"])
        reasoning, cached = fake.billed_details()
        return {"shape": shape, "stream": stream, "kept": run["kept"], "rejected": run["rejected"],
                "trace_bytes_kept": trace_bytes,
                "server_reasoning": reasoning, "run_reasoning": run["tokens"]["reasoning"],
                "server_cached": cached, "run_cached": run["tokens"]["cached_prompt"],
                "server_usd": round(fake.billed_usd(0.56, 1.68, cached_input_per_million=0.07), 8),
                "run_usd": run["cost_usd"]}
    finally:
        fake.stop()


def long_answer(work: Path, time_scale: float) -> dict:
    """One 16k-token thinking at 40 tokens/s (time-scaled), streamed, against a 120 s (scaled) timeout."""
    fake = FakeOpenAI(tokens_per_second=40.0, time_scale=time_scale)
    fake.script = {"[long]": Behaviour([ANSWER], reasoning=[" ".join(f"step{i}" for i in range(16_000))])}
    url = fake.start()
    try:
        seeds = work / "long.jsonl"
        seeds.write_text(json.dumps({"question": "[long] Tim buys 3 dozen eggs at $.50 each?", "answer": "#### 18"}) + "\n")
        job = {"seeds": {"path": str(seeds), "fields": {"question": "question", "answer": "answer"}},
               "teacher": {"backend": "openai", "model": "deepseek-reasoner", "base_url": url, "api_key_env": None,
                           "stream": True, "timeout": 120 * time_scale, "params": {"max_completion_tokens": 17_000}},
               "budget": {"prices": PRICES}}
        config = work / "long.yaml"
        config.write_text(yaml.safe_dump(job))
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "distilforge", "run", str(config), "--output", str(work / "long")],
                              capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        run = json.loads((work / "long" / "run.json").read_text())
        return {"kept": run["kept"], "attempts": run["requests"]["attempts"], "server_requests": fake.chat_requests,
                "wall_seconds": round(seconds, 2), "simulated_generation_s": 16_000 / 40,
                "scaled_generation_s": 16_000 / 40 * time_scale, "scaled_timeout_s": 120 * time_scale}
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--time-scale", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for stream in (False, True):
            for shape in SHAPES:
                print(json.dumps(run_shape(shape, args.seeds, work, stream=stream), ensure_ascii=False), flush=True)
        print(json.dumps({"long_answer": long_answer(work, args.time_scale)}), flush=True)


if __name__ == "__main__":
    main()
