from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # small slices of public datasets: see its README.md


def load_kept(run_dir: Path):
    """Every kept row: DIR/dataset is a DatasetDict (train + validation)."""
    import datasets

    splits = datasets.load_from_disk(str(run_dir / "dataset"))
    return datasets.concatenate_datasets([splits["train"], splits["validation"]])


def run_job(cli: Any, tmp_path: Path, data: dict[str, Any], *extra: str) -> tuple[dict[str, Any], Any, Path]:
    """`distilforge run` on `data`; returns run.json, the kept rows and the run folder."""
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text()), load_kept(out), out


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    server.base_url = server.start()  # type: ignore[attr-defined]
    yield server
    server.stop()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def api_config(seeds: Path, base_url: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "test",
        "seeds": {"path": str(seeds), "fields": {"question": "question", "answer": "answer"}},
        "teacher": {
            "backend": "openai",
            "model": "fake-teacher",
            "base_url": base_url,
            "api_key_env": "DISTILFORGE_TEST_KEY",
            "max_concurrency": 4,
            "retry": {"max_attempts": 3, "second_pass_after_s": 0.2},
            "params": {"temperature": 0.7, "max_tokens": 64},
        },
        "generation": {"mode": "cot", "samples_per_seed": 2},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return config


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DISTILFORGE_TEST_KEY", "sk-test-secret-123")
    from distilforge.cli import app

    runner = CliRunner()

    def invoke(*args: str, expect: int | None = 0) -> Any:
        """The CLI as a user runs it. It fails the test unless the exit code is `expect` (pass the
        code a refusal must give), so no call passes on a crash; None: the caller asserts it."""
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, \
                f"distilforge {' '.join(map(str, args))}: exit {result.exit_code}, expected {expect}\n{result.output}"
        return result

    return invoke


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_model import build_tiny_model

    corpus = [
        "Tim buys 3 dozen eggs. The answer is 18.", "Is a whale a mammal? The answer is yes.",
        "Think step by step, then finish with one line of the form", "0123456789 + - * / = $ , . ?",
    ] * 20
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(autouse=True)
def _isolated_response_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own response cache (on, as for users), so no test is answered by another's run."""
    path = tmp_path / "response-cache.sqlite"
    monkeypatch.setenv("DISTILFORGE_RESPONSE_CACHE", str(path))
    return path
