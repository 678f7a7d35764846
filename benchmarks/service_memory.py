"""The service's memory after a training job is cancelled, with and without the worker's release step.

Run: .venv/bin/python benchmarks/service_memory.py [--student smollm2-135m-instruct|MODEL_DIR] [--steps 200]

Each mode runs in its own process: the API with one worker (FastAPI's TestClient, the real worker
thread), the fake OpenAI server in the same process. A first job generates, trains and completes (the
process's steady size, torch loaded); a second one is cancelled while it trains. The table gives the
process's RSS (VmRSS) idle at start, after the completed job, after the cancelled one, and the growth
the cancel left, side by side for `release` (gc, CUDA cache, malloc_trim after each job) and `keep`
(the release step switched off).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_mode(mode: str, student: str, steps: int) -> dict[str, float]:
    import os

    from fake_openai import Behaviour, FakeOpenAI
    from fastapi.testclient import TestClient

    from distilforge.service import worker as worker_module
    from distilforge.service.api import create_app
    from distilforge.service.settings import Settings

    if mode == "keep":
        worker_module.release_memory = lambda: None
    tmp = Path(tempfile.mkdtemp())
    root = tmp / "data"
    root.mkdir()
    if Path(student).is_dir():  # a model folder: the service reads models under its data roots only
        import shutil

        student = str(shutil.copytree(student, root / "student"))
    seeds = root / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"question": f"Q{i}: {i} + 1?", "answer": f"#### {i + 1}"}) + "\n"
                             for i in range(64)))
    fake = FakeOpenAI(default=Behaviour(["Add one.\nThe answer is 1."]))
    url = fake.start()
    os.environ["BENCH_KEY"] = "sk-bench"
    settings = Settings(home=tmp / "home", database_url=f"sqlite:///{tmp / 'db.sqlite'}", api_tokens=["t"],
                        data_roots=[root], allowed_teachers=[url], teacher_key_envs=["BENCH_KEY"])
    auth = {"Authorization": "Bearer t"}
    job = {"seeds": {"path": str(seeds)},
           "teacher": {"backend": "openai", "model": "fake-teacher", "base_url": url, "api_key_env": "BENCH_KEY"},
           "train": {"enabled": True, "student": student, "max_steps": steps, "batch_size": 2, "max_length": 128}}

    def wait(client: TestClient, job_id: str, states: set[str]) -> dict[str, object]:
        while True:
            state = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            if state["state"] in states:
                return state
            time.sleep(0.2)

    out = {"idle": rss_mb()}
    with TestClient(create_app(settings, workers=1, scheduler=False)) as client:
        first = client.post("/v1/jobs", json={**job, "train": {**job["train"], "max_steps": 2}}, headers=auth).json()
        wait(client, first["id"], {"succeeded", "failed"})
        time.sleep(1.0)
        out["after_job"] = rss_mb()
        second = client.post("/v1/jobs", json=job, headers=auth).json()
        while client.get(f"/v1/jobs/{second['id']}", headers=auth).json().get("stage") != "train":
            time.sleep(0.2)
        time.sleep(3.0)  # well into training
        client.post(f"/v1/jobs/{second['id']}/cancel", headers=auth)
        wait(client, second["id"], {"cancelled", "succeeded", "failed"})
        time.sleep(1.0)
        out["after_cancel"] = rss_mb()
    fake.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mode", choices=["release", "keep"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args.mode, args.student, args.steps)))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"RSS MB, student {args.student}")
    for col in ("mode", "idle", "after a job", "after a cancelled training", "left by the cancel"):
        table.add_column(col, justify="right")
    for mode in ("release", "keep"):
        line = subprocess.run([sys.executable, __file__, "--mode", mode, "--student", args.student,
                               "--steps", str(args.steps)], capture_output=True, text=True, check=True).stdout
        r = json.loads(line.strip().splitlines()[-1])
        table.add_row(mode, f"{r['idle']:.0f}", f"{r['after_job']:.0f}", f"{r['after_cancel']:.0f}",
                      f"{r['after_cancel'] - r['after_job']:+.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
