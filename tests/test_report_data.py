"""The report's Data section: sampled kept rows and rejects per reason, escaped, filterable in the page."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import api_config, run_job, write_jsonl
from fake_openai import Behaviour

from distilforge.core.run_files import write_atomic
from distilforge.report import build_report
from distilforge.report.data import KEPT, MAX_CHARS, PER_REASON, sample_rows

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Page(HTMLParser):
    """The elements the tests look at: ids, the reason options, the sampled rows, scripts and external refs."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.options: list[str] = []
        self.samples: list[str] = []
        self.scripts: list[str] = []
        self.external: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "option":
            self.options.append(a["value"] or "")
        if tag == "article" and "sample" in (a.get("class") or ""):
            self.samples.append(a["data-reason"] or "")
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
            if a.get("src"):
                self.external.append(a["src"])
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_report_shows_kept_rows_and_rejects_per_reason(fake, cli, tmp_path):
    seeds = [{"question": f"Q-{i}: {i} + 1?", "answer": f"#### {i + 1}"} for i in range(6)]
    seeds.append({"question": f"Q-hostile: {HOSTILE}", "answer": "#### 7"})
    fake.script = {f"Q-{i}:": Behaviour([f"{i} and 1 is {i + 1}.\nThe answer is {i + 1}.",
                                         f"One more than {i}.\nThe answer is {i + 1}."]) for i in range(4)}
    fake.script["Q-4:"] = Behaviour(["4 and 1 is 6.\nThe answer is 6.", "I'm sorry, I cannot."])
    fake.script["Q-5:"] = Behaviour(["Five and one.", "Six, probably"])
    fake.script["Q-hostile"] = Behaviour([f"{HOSTILE}\nThe answer is 8.", "</pre></article>\nThe answer is 9."])
    config = api_config(write_jsonl(tmp_path / "s.jsonl", seeds), fake.base_url)
    run, kept, out = run_job(cli, tmp_path, config)
    assert run["rejected"] == {"refusal": 1, "unparseable": 2, "wrong_answer": 3}

    page_path = out / "report.html"  # written by the run; rebuilt here the same way the service does
    build_report(out)
    text = page_path.read_text(encoding="utf-8")
    page = parse(page_path)
    assert "data" in page.ids and "data-rows" in page.ids
    assert page.options == ["all", "kept", "wrong_answer", "unparseable", "refusal"]  # most frequent first
    assert page.samples.count("kept") == len(kept) == 8
    assert sorted(r for r in page.samples if r != "kept") == sorted(
        ["wrong_answer"] * 3 + ["unparseable"] * 2 + ["refusal"])
    assert set(page.samples) <= set(page.options)  # every row is reachable from the selector
    # the rejects carry their filter's detail
    assert "answered 6, gold 5" in text and "no final answer stated" in text
    # untrusted text is escaped: the only scripts are ours, nothing is fetched from anywhere
    assert HOSTILE not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "&lt;/pre&gt;&lt;/article&gt;" in text
    assert len(page.scripts) == 1 and page.external == []
    script = page.scripts[0]
    for element in re.findall(r'getElementById\("([^"]+)"\)', script):
        assert element in page.ids, element
    assert all(sel.split()[0].lstrip("#") in page.ids for sel in re.findall(r'querySelectorAll\("([^"]+)"\)', script))
    assert 'addEventListener("change"' in script and 'addEventListener("input"' in script and "location.hash" in script
    md = (out / "report.md").read_text()
    assert "## Data" in md and "- rejected `wrong_answer`: 3 of 3 sampled" in md


def _table(rows: list[dict], path: Path, row_group_size: int) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)


def test_sample_is_bounded_spread_and_repeatable(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "parquet").mkdir(parents=True)
    long = "x" * (MAX_CHARS * 5)
    kept = [{"seed_id": f"{i:05d}", "sample_index": 0, "question": f"q{i}", "rationale": long, "answer": "1",
             "gold": "1", "judge_score": 4.0} for i in range(5000)]
    _table(kept[:4000], run_dir / "parquet" / "train.parquet", 500)
    _table(kept[4000:], run_dir / "parquet" / "validation.parquet", 500)
    reasons = ["wrong_answer"] * 3000 + ["judge"] * 40 + ["length"] * 3
    _table([{"seed_id": f"{i:05d}", "sample_index": 1, "question": f"r{i}", "text": long, "reject_reason": r,
             "reject_detail": f"detail {i}"} for i, r in enumerate(reasons)], run_dir / "parquet" / "rejected.parquet", 700)

    samples = sample_rows(run_dir)
    assert len(samples["kept"]) == KEPT and samples["kept_total"] == 5000
    assert len({r["seed_id"][:2] for r in samples["kept"]}) > 3  # spread over the file, not its first rows
    assert samples["rejected_total"] == {"wrong_answer": 3000, "judge": 40, "length": 3}
    assert {k: len(v) for k, v in samples["rejected"].items()} == {"wrong_answer": PER_REASON, "judge": PER_REASON,
                                                                    "length": 3}
    assert all(r["reject_reason"] == k for k, rows in samples["rejected"].items() for r in rows)
    assert sample_rows(run_dir) == samples  # a rebuilt report shows the same rows

    write_atomic(run_dir / "run.json", json.dumps({"name": "big", "kept": 5000}))
    html_path, _ = build_report(run_dir)
    assert html_path.stat().st_size < 200_000  # texts are cut: the page stays small
    assert "judge 4.0" in html_path.read_text() and "more characters]" in html_path.read_text()


def test_a_run_without_rows_or_with_a_broken_file_still_gets_a_report(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_atomic(run_dir / "run.json", json.dumps({"name": "empty"}))
    html_path, _ = build_report(run_dir)
    assert "No rows yet." in html_path.read_text()
    (run_dir / "parquet").mkdir()
    (run_dir / "parquet" / "train.parquet").write_bytes(b"not parquet")
    html_path, _ = build_report(run_dir)
    assert "Could not read the rows" in html_path.read_text()
