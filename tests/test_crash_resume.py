"""A run killed mid-flight: on resume only what was in flight is paid for again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
from conftest import api_config, write_config, write_jsonl
from fake_openai import Behaviour

from distilforge.core.journal import JournalReader

pytestmark = pytest.mark.slow


def start_then_kill(cmd: list[str], env: dict[str, str], journal: JournalReader, ready) -> None:
    """Run `cmd`, SIGKILL it once `ready(journal)` is true of its run folder's journal (or after 60 s)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if journal.paths:
            try:
                if ready(journal):
                    break
            except sqlite3.OperationalError:  # the shard is being created
                pass
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run exited {proc.returncode} before it was killed"
    time.sleep(0.5)  # let the server log requests that were on the wire at the kill


def test_sigkill_then_resume_pays_only_for_in_flight(fake, tmp_path):
    n_seeds, concurrency = 12, 2
    fake.latency = (0.25, 0.3)
    fake.default = Behaviour(["Adding gives the total.\nThe answer is 3."])
    seeds = write_jsonl(tmp_path / "seeds.jsonl",
                        [{"question": f"Item {i}: what is 1 + 2?", "answer": "#### 3"} for i in range(n_seeds)])
    data = api_config(seeds, fake.base_url)
    data["teacher"]["max_concurrency"] = concurrency
    data["generation"]["samples_per_seed"] = 1
    config = write_config(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    env = {**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}
    cmd = [sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)]

    journal = JournalReader(out)
    start_then_kill(cmd, env, journal, lambda j: j.totals().answers >= 4)
    committed = journal.totals().answers
    assert 4 <= committed < n_seeds, "the run should have been killed part-way"
    first_run_requests = len(fake.requests)
    in_flight = first_run_requests - committed  # sent, but not committed when the process died
    assert in_flight <= 2 * concurrency  # on the wire, or answered and awaiting its commit

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == n_seeds
    assert journal.totals().answers == n_seeds

    asked = Counter(r["body"]["messages"][-1]["content"].split(":")[0] for r in fake.requests)
    paid_twice = sum(c - 1 for c in asked.values())
    # Only requests in flight at the kill were sent again.
    assert paid_twice <= in_flight
    assert len(fake.requests) - first_run_requests == n_seeds - run["samples"]["from_journal"]


def test_reservations_of_a_killed_run_count_at_worst_case(fake, tmp_path):
    """With a cap, a request in flight at a crash may have been billed: the next run assumes it was."""
    fake.latency = (0.3, 0.35)
    fake.default = Behaviour(["Adding gives the total.\nThe answer is 3."])
    seeds = write_jsonl(tmp_path / "seeds.jsonl",
                        [{"question": f"Item {i}: what is 1 + 2?", "answer": "#### 3"} for i in range(8)])
    data = api_config(seeds, fake.base_url)
    data["teacher"]["max_concurrency"] = 2
    data["generation"]["samples_per_seed"] = 1
    data["budget"] = {"prices": {"input_per_million": 1000.0, "output_per_million": 1000.0}, "max_usd": 100.0}
    config = write_config(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    env = {**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}
    cmd = [sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)]
    journal = JournalReader(out)
    start_then_kill(cmd, env, journal, lambda j: j.totals().answers >= 2 and j.totals().orphans > 0)
    totals = journal.totals()
    orphans, worst, billed = totals.orphans, totals.orphaned_usd, totals.answered_usd
    assert orphans >= 1

    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["budget"]["orphaned_requests"] == orphans
    # cost_usd is the whole folder's (the killed run's orphans at worst case included); this command's share apart.
    assert run["cost_usd"] == pytest.approx(run["budget"]["spent_usd_total"])
    assert run["budget"]["spent_usd_total"] == pytest.approx(billed + worst + run["this_invocation"]["cost_usd"])
