"""Nothing blocks the event loop while requests are in flight: budget SQL, journal reads, file reads."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import api_config, write_jsonl

pytestmark = pytest.mark.slow

SERVER = """
import sys, time
sys.path.insert(0, {tests!r})
from fake_openai import Behaviour, FakeOpenAI
server = FakeOpenAI(latency=(0.5, 0.7), log_requests=False, default=Behaviour(["One more.\\nThe answer is 1."]))
print(server.start(), flush=True)
while True:
    time.sleep(1)
"""

# The job, in a fresh interpreter as a user's run would be, with the service's shared monthly ledger
# (SQLite) as its budget. The run's own periodic timer (the watcher that reports progress every
# 0.25 s) measures the loop: each period's overrun is how long the loop could not run it.
RUN = """
import json, sys, time
from pathlib import Path
from rich.console import Console
from distilforge.schemas import JobConfig
from distilforge.core.prices import resolve_prices
from distilforge.pipeline.steps import RunControl
from distilforge.pipeline.lifecycle import run_job
from distilforge.service.budgets import Ledger, LedgerBudget, month_scopes
from distilforge.service.db import make_engine, make_sessions
from distilforge.service.migrate import migrate

engine = make_engine(sys.argv[2])
migrate(engine)
ledger = Ledger(make_sessions(engine))
caps = {{month_scopes(None)[0]: 1000.0}}

class Control(RunControl):
    beats = []
    def report(self, progress):
        self.beats.append((time.monotonic(), progress["samples_done"]))
    def budget(self, config, spent):
        return LedgerBudget(resolve_prices(config), config.budget.max_usd, spent=spent, ledger=ledger, caps=caps)

config = JobConfig.model_validate(json.loads(open(sys.argv[1]).read()))
result = run_job(config, Path({run_dir!r}), Control(), console=Console(quiet=True), stages=("generate",))
print(json.dumps({{"status": result.status, "kept": result.run["kept"], "beats": Control.beats,
                  "ledger": ledger.usage()[caps and next(iter(caps))]}}))
"""


def test_the_loop_never_stalls_with_256_requests_in_flight_and_the_shared_budget_on(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", SERVER.format(tests=str(Path(__file__).parent))],
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()  # type: ignore[union-attr]
        n = 1536
        seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"L{i}: 0 + 1?", "answer": "#### 1"}
                                                       for i in range(n)])
        data = api_config(seeds, base_url)
        data["teacher"].update(max_concurrency=256, api_key_env=None)
        data["generation"]["samples_per_seed"] = 1
        data["budget"] = {"prices": {"input_per_million": 1.0, "output_per_million": 1.0}, "max_usd": 100.0}
        (tmp_path / "job.json").write_text(json.dumps(data))
        script = RUN.format(run_dir=str(tmp_path / "run"))
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "job.json"), f"sqlite:///{tmp_path / 's.db'}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["status"] == "completed" and out["kept"] == n
        beats = out["beats"]
        # While requests are in flight: after the first answers, before the last.
        busy = [(a, b) for (a, done_a), (b, _) in itertools.pairwise(beats) if 0 < done_a < n]
        lags = [b - a - 0.25 for a, b in busy]
        print(f"max loop lag {max(lags) * 1000:.1f} ms over {len(lags)} timer periods with requests in flight")
        assert len(lags) >= 4, "the run was too short to measure"
        # No timed assertion that load can explain: a quiet 2-core machine measures tens of ms here, one at load
        # average 10 (five processes per core) about 1 s, so only a stall of 3 s or more counts as blocking. The
        # lag itself is a figure, printed above; benchmarks/loop_lag.py measures it against an idle loop.
        assert max(lags) < 3.0, f"the event loop stalled {max(lags) * 1000:.0f} ms"
        assert out["ledger"]["reserved_usd"] < 1e-9 and out["ledger"]["spent_usd"] > 0  # every call went through it
        assert server.poll() is None, f"the fake server exited {server.returncode} during the run"
    finally:
        server.kill()
        server.wait()
