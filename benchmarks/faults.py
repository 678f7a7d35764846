"""The fault table: each scenario of tests/test_faults.py run through the CLI, against the server's bill.

Run: .venv/bin/python benchmarks/faults.py

For each scenario (a fake teacher that bills every request it accepts, then misbehaves): what the
server billed, the cap, what distilforge reported (this run's cost, the folder's total, the part
charged for unknown outcomes, answers without usage), how the run ended, and the accounting of every
seed x sample (kept + rejected + failed.jsonl against what the job asked for).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import datasets
from conftest import load_kept, write_config
from fake_openai import FakeOpenAI
from rich.console import Console
from rich.table import Table
from test_faults import PRICE, SCENARIOS, read_failed, scripted_job
from typer.testing import CliRunner

from distilforge.cli import app


def main() -> None:
    os.environ["DISTILFORGE_TEST_KEY"] = "sk-bench"
    table = Table(title="faults: the server's bill against what distilforge reported (USD)")
    for col in ("scenario", "server billed", "cap", "cost_usd", "spent total", "unknown outcome", "usage missing",
                "stopped", "kept / rejected / failed = asked"):
        table.add_column(col, justify="right")
    for scenario in SCENARIOS:
        fake = FakeOpenAI(latency=scenario.latency, fault_rates=dict(scenario.fault_rates),
                          fault_seed=scenario.fault_seed, storm=scenario.storm)
        fake.hang_seconds = scenario.timeout + 0.5
        fake.base_url = fake.start()  # type: ignore[attr-defined]
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data, expected = scripted_job(Path(tmp), fake, scenario.n_seeds, max_usd=scenario.max_usd,
                                              timeout=scenario.timeout)
                out = Path(tmp) / "run"
                CliRunner().invoke(app, ["run", str(write_config(Path(tmp) / "job.yaml", data)), "--output", str(out)])
                run = json.loads((out / "run.json").read_text())
                kept, failed = len(load_kept(out)), len(read_failed(out))
                rejected = len(datasets.load_from_disk(str(out / "rejected")))
        finally:
            fake.stop()
        bill = fake.billed_usd(PRICE, PRICE)
        table.add_row(scenario.name, f"{bill:.4f}", f"{scenario.max_usd:g}", f"{run['cost_usd']:.4f}",
                      f"{run['budget']['spent_usd_total']:.4f}", f"{run['budget']['unknown_outcome_usd']:.4f}",
                      str(run["requests"]["usage_missing"]), run["stopped"],
                      f"{kept} + {rejected} + {failed} = {kept + rejected + failed} / {len(expected)}")
    Console().print(table)


if __name__ == "__main__":
    main()
