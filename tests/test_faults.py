"""Fault injection: the money and accounting promises, checked against the server's own bill.

The fake server bills every request it accepts for processing (see fake_openai.py), then may hang,
drop the connection, cut the body or leave out `usage`, as real providers do. Whatever happens:
- the server's bill never passes `budget.max_usd`;
- the client never reports less than it was billed (`cost_usd` for the run, `budget.spent_usd_total`
  for the folder), because an unknown outcome is charged at its worst case (`budget.unknown_outcome_usd`)
  and a response without usage is settled at its reservation (`requests.usage_missing`);
- `cost_by_stage` sums to `cost_usd`;
- every (seed_id, sample_index) ends in exactly one of dataset/, rejected/ or failed.jsonl (which also
  lists the samples a budget stop left unsent);
- a run killed with SIGKILL and rerun pays again only for what was in flight at the kill.

Each test collects every broken promise before failing, so one run lists them all.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour, FakeOpenAI

from distilforge.core.journal import JournalReader

PRICE = 1000.0  # USD per million tokens, in and out: a request costs cents, so every token shows
PRICES = {"input_per_million": PRICE, "output_per_million": PRICE}
UNKNOWN_KINDS = ("hang", "slow", "drop", "drop_after", "cut", "malformed")  # billed, no usable answer
MISSING = object()


class Problems:
    """Soft assertions: every broken promise of a run is reported, not only the first."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok and message not in self.items:
            self.items.append(message)

    def value(self, data: dict[str, Any], dotted: str) -> Any:
        """run.json's `dotted` value, or MISSING (recorded as a problem)."""
        node: Any = data
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                self.check(False, f"run.json has no {dotted}")
                return MISSING
            node = node[part]
        return node

    def number(self, data: dict[str, Any], dotted: str) -> float | None:
        value = self.value(data, dotted)
        if value is MISSING:
            return None
        if not isinstance(value, (int, float)):
            self.items.append(f"run.json {dotted} = {value!r} is not a number")
            return None
        return float(value)

    def done(self) -> None:
        assert not self.items, "\n".join(["broken promises:", *self.items])


# -- helpers ----------------------------------------------------------------------------------------


def question_key(i: int) -> str:
    return f"F{i:02d}:"


def scripted_job(tmp_path: Path, fake: FakeOpenAI, n_seeds: int, *, max_usd: float, samples: int = 2,
                 **teacher: Any) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """n seeds `Fxx: what is x + 1?` with ids Fxx, each scripted with two right, distinct answers."""
    fake.script = {question_key(i): Behaviour([f"{i} plus 1 is {i + 1}.\nThe answer is {i + 1}.",
                                               f"Adding one to {i} gives {i + 1}.\nThe answer is {i + 1}."])
                   for i in range(n_seeds)}
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [
        {"id": question_key(i)[:-1], "question": f"{question_key(i)} what is {i} + 1?", "answer": f"#### {i + 1}"}
        for i in range(n_seeds)
    ])
    data = api_config(seeds, fake.base_url)  # type: ignore[attr-defined]
    data["seeds"]["fields"]["id"] = "id"
    data["teacher"].update({"max_concurrency": 4, "retry": {"max_attempts": 4, "second_pass_after_s": 0.2},
                            "timeout": 0.5, **teacher})
    data["teacher"]["params"]["max_tokens"] = 32  # a request's worst case ~5x its real cost
    data["generation"]["samples_per_seed"] = samples
    data["budget"] = {"prices": dict(PRICES), "max_usd": max_usd}
    expected = [(question_key(i)[:-1], s) for i in range(n_seeds) for s in range(samples)]
    return data, expected


def read_failed(out: Path) -> list[dict[str, Any]]:
    path = out / "failed.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_accounting(p: Problems, out: Path, expected: list[tuple[str, int]]) -> None:
    """Every (seed_id, sample_index) in exactly one of dataset/, rejected/, failed.jsonl."""
    where: Counter[tuple[str, int]] = Counter()
    try:
        for ds in (load_kept(out), datasets.load_from_disk(str(out / "rejected"))):
            where.update(zip(ds["seed_id"], ds["sample_index"], strict=True))
    except FileNotFoundError as exc:
        p.check(False, f"dataset or rejected folder missing: {exc}")
    failed = read_failed(out)
    p.check(all({"seed_id", "sample_index", "error"} <= set(f) for f in failed),
            "failed.jsonl lines need seed_id, sample_index and error")
    where.update((str(f.get("seed_id")), int(f.get("sample_index", -1))) for f in failed)
    twice = sorted(k for k, c in where.items() if c > 1)
    missing = sorted(set(expected) - set(where))
    unknown = sorted(set(where) - set(expected))
    p.check(not twice, f"accounting: {len(twice)} samples appear more than once, e.g. {twice[:3]}")
    p.check(not missing, f"accounting: {len(missing)} of {len(expected)} samples are in none of dataset/, "
                         f"rejected/, failed.jsonl, e.g. {missing[:3]}")
    p.check(not unknown, f"accounting: samples that are not part of the job: {unknown[:3]}")


def check_money(p: Problems, run: dict[str, Any], *, max_usd: float, billed_run: float,
                billed_folder: float) -> None:
    """The bill under the cap, and the client's figures never below the server's bill."""
    p.check(billed_folder <= max_usd + 1e-9, f"the server billed ${billed_folder:.4f}, over max_usd ${max_usd}")
    cap = p.number(run, "budget.max_usd")
    p.check(cap is None or cap == pytest.approx(max_usd), f"budget.max_usd = {cap}, configured {max_usd}")
    total = p.number(run, "budget.spent_usd_total")
    if total is not None:
        p.check(total + 1e-9 >= billed_folder,
                f"budget.spent_usd_total ${total:.4f} < server bill ${billed_folder:.4f} for this folder")
        p.check(total <= max_usd + 1e-9, f"budget.spent_usd_total ${total:.4f} passes max_usd ${max_usd}")
    cost = p.number(run, "cost_usd")
    if cost is not None:
        p.check(cost + 1e-9 >= billed_run, f"cost_usd ${cost:.4f} < server bill ${billed_run:.4f} for this run")
    by_stage = p.value(run, "cost_by_stage")
    if by_stage is not MISSING:
        p.check(isinstance(by_stage, dict) and "generate" in by_stage, f"cost_by_stage {by_stage!r} has no generate")
        if isinstance(by_stage, dict) and cost is not None:
            p.check(sum(by_stage.values()) == pytest.approx(cost, abs=1e-6),
                    f"cost_by_stage {by_stage} does not sum to cost_usd {cost}")
    unknown = p.number(run, "budget.unknown_outcome_usd")
    if unknown is not None and cost is not None:
        p.check(0 <= unknown <= cost + 1e-9, f"budget.unknown_outcome_usd {unknown} is not within cost_usd {cost}")


# -- 0. the fake bills like a provider ------------------------------------------------------------------


def test_the_fake_server_bills_what_it_processes(fake):
    """Billed: answers (with or without usage), hangs, drops and cut bodies. Not billed: 429, 5xx, 4xx."""
    import httpx

    billed = ["ok", "no_usage", "hang", "slow", "drop", "drop_after", "cut", "malformed"]
    refused = ["429", "500", "502", "503", "5xx", "400", "401"]
    fake.hang_seconds = 0.3
    fake.script = {f"K-{k}:": Behaviour(["one two three four five"], always=None if k == "ok" else k)
                   for k in billed + refused}
    seen: dict[str, Any] = {}
    with httpx.Client(timeout=0.2) as http:
        for kind in billed + refused:
            body = {"model": "fake-teacher", "n": 2, "max_tokens": 3,
                    "messages": [{"role": "user", "content": f"K-{kind}: six seven"}]}
            try:
                response = http.post(f"{fake.base_url}/chat/completions", json=body)  # type: ignore[attr-defined]
            except httpx.HTTPError as exc:
                seen[kind] = type(exc).__name__
                continue
            try:
                seen[kind] = (response.status_code, response.json(), response.headers)
            except ValueError:
                seen[kind] = (response.status_code, "unreadable", response.headers)
    assert fake.billed_keys() == Counter({f"K-{k}:": 1 for k in billed})
    # 3 prompt words ("K-kind: six seven"), 2 choices of 5 words capped at max_tokens 3.
    assert fake.billed_tokens() == (3 * len(billed), 6 * len(billed))
    assert fake.billed_usd(PRICE, PRICE) == pytest.approx(len(billed) * 9 * PRICE / 1e6)
    assert seen["ok"][0] == 200 and seen["ok"][1]["usage"]["completion_tokens"] == 6
    assert seen["no_usage"][0] == 200 and "usage" not in seen["no_usage"][1]
    assert seen["hang"] == seen["slow"] == "ReadTimeout"
    assert seen["drop"] == seen["drop_after"] == "RemoteProtocolError"
    assert seen["cut"][:2] == seen["malformed"][:2] == (200, "unreadable")
    assert seen["429"][0] == 429 and float(seen["429"][2]["retry-after"]) > 0
    assert seen["429"][2]["x-ratelimit-remaining-requests"] == "0"  # a limit-less server sends no limit
    for kind in ("500", "502", "503", "5xx", "400", "401"):
        status, error, _ = seen[kind]
        assert status == (500 if kind == "5xx" else int(kind)) and error["error"]["message"]
    assert fake.faults == Counter({k: 1 for k in billed + refused if k != "ok"})

    # Random faults are drawn from the server's own seeded generator; a storm answers 429 until it ends.
    draws = []
    for _ in range(2):
        server = FakeOpenAI(fault_rates={"500": 0.3, "no_usage": 0.3}, fault_seed=11)
        with server.lock:
            draws.append([server._draw_fault() for _ in range(50)])
    assert draws[0] == draws[1] and {"500", "no_usage", None} == set(draws[0])
    fake.storm, fake.script = (0.0, 0.3), {}
    fake._first_chat = time.monotonic()
    with httpx.Client(timeout=2) as http:
        body = {"model": "fake-teacher", "messages": [{"role": "user", "content": "storm"}]}
        during = http.post(f"{fake.base_url}/chat/completions", json=body)  # type: ignore[attr-defined]
        time.sleep(float(during.headers["retry-after"]) + 0.02)
        after = http.post(f"{fake.base_url}/chat/completions", json=body)  # type: ignore[attr-defined]
    assert during.status_code == 429 and after.status_code == 200 and fake.faults["storm"] == 1


# -- 1. a table of faults, each through the CLI --------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    fault_rates: dict[str, float] = field(default_factory=dict)
    storm: tuple[float, float] | None = None
    max_usd: float = 100.0
    binds: bool = False  # the cap is below what the job costs: the run must stop with "budget"
    clean: bool = False  # no billed fault: the client's cost equals the bill, nothing unknown, nothing lost
    n_seeds: int = 16
    latency: tuple[float, float] = (0.01, 0.03)
    timeout: float = 5.0  # teacher.timeout: short only where hangs must time out (hangs last 0.5 s more)
    fault_seed: int = 1  # the k-th request takes the k-th draw: seed 1 puts 3 faults in the first 20 at 5%


# Prices make a request cost ~$0.045 and its worst case ~$0.21; up to 8 seeds are open at once.
SCENARIOS = [
    # A response without usage is settled at its worst case: 16 of them (~$3.4) cannot fit under $2.5.
    Scenario("no_usage_everywhere", {"no_usage": 1.0}, max_usd=2.5, binds=True),
    Scenario("hang_after_billing", {"hang": 0.3}, max_usd=2.5, timeout=0.5),
    Scenario("drop_after_billing", {"drop_after": 0.3}),
    Scenario("cut_200_body", {"cut": 0.3}),
    Scenario("429_storm", storm=(0.05, 0.5), clean=True, latency=(0.02, 0.05)),
    Scenario("five_percent_5xx", {"500": 0.03, "503": 0.02}, clean=True, n_seeds=20),
    Scenario("mixed", {"no_usage": 0.1, "hang": 0.05, "drop_after": 0.05, "cut": 0.05, "500": 0.05, "429": 0.05},
             max_usd=1.5, binds=True, n_seeds=20, timeout=0.8),
]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_faults_never_cost_more_than_reported(fake, cli, tmp_path, scenario):
    fake.latency = scenario.latency
    fake.hang_seconds = scenario.timeout + 0.5  # always past teacher.timeout
    fake.fault_rates = dict(scenario.fault_rates)
    fake.fault_seed = scenario.fault_seed
    fake.storm = scenario.storm
    data, expected = scripted_job(tmp_path, fake, scenario.n_seeds, max_usd=scenario.max_usd,
                                  timeout=scenario.timeout)
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())

    p = Problems()
    bill = fake.billed_usd(PRICE, PRICE)
    kinds = fake.billed_kinds()
    check_money(p, run, max_usd=scenario.max_usd, billed_run=bill, billed_folder=bill)
    check_accounting(p, out, expected)
    if scenario.binds:
        p.check(run.get("stopped") == "budget", f"stopped = {run.get('stopped')!r}: the ${scenario.max_usd} cap "
                                                f"should bind (server bill ${bill:.4f}, {dict(kinds)})")
    missing = p.number(run, "requests.usage_missing")
    p.check(missing is None or missing == kinds["no_usage"],
            f"requests.usage_missing = {missing}, but the server sent {kinds['no_usage']} 200s without usage")
    unknown = p.number(run, "budget.unknown_outcome_usd")
    unknown_bill = sum(b.usd(PRICE, PRICE) for b in fake.ledger() if b.kind in UNKNOWN_KINDS)
    if unknown is not None:
        # Charged at worst case, so at least what the server billed for those attempts.
        p.check(unknown + 1e-9 >= unknown_bill, f"budget.unknown_outcome_usd ${unknown:.4f} < ${unknown_bill:.4f} "
                                                f"billed for attempts that got no usable answer")
        p.check(unknown_bill > 0 or unknown == 0, f"budget.unknown_outcome_usd ${unknown:.4f} with no unknown outcome")
    if scenario.clean:
        # Every paid answer came back with usage: settled exactly, nothing unknown, nothing dead-lettered.
        cost = run.get("cost_usd")
        p.check(cost == pytest.approx(bill, abs=1e-6), f"cost_usd {cost} != server bill {bill:.6f}")
        p.check(not read_failed(out), f"failed.jsonl is not empty: {read_failed(out)[:2]}")
    if scenario.storm:
        p.check(fake.faults["storm"] > 0, "the storm never happened (test set-up)")
        p.check(run["requests"]["rate_limited"] == fake.faults["storm"],
                f"requests.rate_limited = {run['requests']['rate_limited']}, the server sent {fake.faults['storm']}")
    injected = {k: v for k, v in fake.faults.items() if k in scenario.fault_rates}
    p.check(not scenario.fault_rates or sum(injected.values()) > 0, f"no fault was injected (test set-up): {injected}")
    p.done()


# -- 2. SIGKILL at random points, then resume ----------------------------------------------------------


def committed_samples(out: Path) -> set[tuple[str, int]]:
    """(seed_id, sample_index) of every answer committed to the journal (a dead writer's WAL included)."""
    return {(a.seed_id, a.sample_index) for a in JournalReader(out).answers()}


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


KILL_FAULTS = {"no_usage": 0.05, "hang": 0.05, "drop_after": 0.05, "cut": 0.03, "500": 0.05, "429": 0.03}


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_sigkill_at_a_random_point_then_resume(fake, cli, tmp_path, seed):
    rng = random.Random(seed)
    n_seeds, samples, concurrency = 24, 2, 3
    # Even seeds: a cap below what the job costs once faults are charged at worst case; odd: no real cap.
    max_usd = 2.6 if seed % 2 == 0 else 100.0
    fake.latency = (0.06, 0.12)
    fake.hang_seconds = 0.8
    fake.fault_rates = dict(KILL_FAULTS)
    fake.fault_seed = seed
    data, expected = scripted_job(tmp_path, fake, n_seeds, max_usd=max_usd, samples=samples,
                                  max_concurrency=concurrency)
    config = write_config(tmp_path / "job.yaml", data)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distilforge", "run", str(config), "--output", str(out)]
    env = {**os.environ, "DISTILFORGE_TEST_KEY": "sk-test"}
    log = tmp_path / "first-run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            assert wait_for(lambda: fake.chat_requests > 0 or proc.poll() is not None, 60), "no request in 60 s"
            time.sleep(rng.uniform(0.05, 1.6))
            # SIGKILL in the same instant as the server's view of what is in flight.
            at_kill = fake.snapshot(proc.kill)
        finally:
            proc.kill()
            proc.wait(30)
    assert proc.returncode in (0, -9), log.read_text()[-2000:]
    time.sleep(0.25)  # requests already on the wire at the kill reach the server (and its bill)
    mark = len(fake.bills)
    first_bill = fake.ledger(0)
    committed = committed_samples(out)

    result = cli("run", config, "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())

    p = Problems()
    samples_of: dict[str, set[tuple[str, int]]] = {}
    for seed_id, index in expected:
        samples_of.setdefault(f"{seed_id}:", set()).add((seed_id, index))
    done_keys = {k for k, s in samples_of.items() if s <= committed}
    paid_first = Counter(b.key for b in first_bill)
    paid_again = fake.billed_keys(since=mark)
    check_money(p, run, max_usd=max_usd, billed_run=fake.billed_usd(PRICE, PRICE, since=mark),
                billed_folder=fake.billed_usd(PRICE, PRICE))
    check_accounting(p, out, expected)
    rebilled_done = sorted(k for k in paid_again if k in done_keys)
    p.check(not rebilled_done, f"keys committed before the kill were billed again on resume: {rebilled_done}")
    # In flight at the kill, from the client's side: being processed, waiting to retry after a failure,
    # on the wire (reached the server after the kill), or answered but not yet committed.
    on_the_wire = {b.key for b in first_bill if b.request > at_kill["chat_requests"]}
    answered = {k for k, kind in at_kill["last_kind"].items() if kind in ("ok", "no_usage")}
    in_flight = at_kill["open_keys"] | on_the_wire | (answered - done_keys)
    repaid = sorted(k for k in paid_again if k in paid_first)
    p.check(len(repaid) <= len(in_flight),
            f"resume paid again for {len(repaid)} questions ({repaid}), but only {len(in_flight)} were in flight "
            f"at the kill ({sorted(in_flight)}; server in_flight {at_kill['in_flight']})")
    p.check(set(repaid) <= in_flight, f"resume paid again for questions not in flight at the kill: "
                                      f"{sorted(set(repaid) - in_flight)}")
    p.check(sum(paid_first.values()) > 0, "the first run was killed before anything was billed (test set-up)")
    p.done()
