"""Build DIR/report.html and DIR/report.md from run.json and the student's loss log.

Plots are rendered with matplotlib (Agg, no display) to PNG files in DIR/report_files/; the HTML
embeds them as data URIs so the one file opens anywhere, and the Markdown links the files.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from distilforge.core.run_files import read_run, write_atomic
from distilforge.report.data import STYLE as DATA_STYLE
from distilforge.report.data import data_html, data_markdown, sample_rows


def _plots(run: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Loss and accuracy plots (matplotlib, only once a student exists: a data-only run needs none)."""
    loss_file = run_dir / "student" / "loss.json"
    losses = json.loads(loss_file.read_text()) if loss_file.exists() else []
    ev = run.get("eval") or {}
    bars = [(k, ev[k]) for k in ("before", "after", "teacher") if ev.get(k)]
    if not losses and not bars:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = run_dir / "report_files"
    folder.mkdir(exist_ok=True)
    out: dict[str, Path] = {}
    if loss_file.exists() and losses:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot([p["step"] for p in losses], [p["loss"] for p in losses], marker="o", color="#3b7dd8")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Student training loss")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        out["loss"] = folder / "loss.png"
        fig.savefig(out["loss"], dpi=110)
        plt.close(fig)

    if bars:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        acc = [b["accuracy"] for _, b in bars]
        low = [b["accuracy"] - b["ci95"][0] for _, b in bars]
        high = [b["ci95"][1] - b["accuracy"] for _, b in bars]
        ax.bar([k for k, _ in bars], acc, yerr=[low, high], capsize=6, color=["#9aa5b1", "#3b7dd8", "#56a65b"][: len(bars)])
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy (95% bootstrap CI)")
        ax.set_title("Held-out accuracy")
        fig.tight_layout()
        out["eval"] = folder / "eval.png"
        fig.savefig(out["eval"], dpi=110)
        plt.close(fig)
    return out


def _acc(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    low, high = block["ci95"]
    return f"{block['accuracy']:.1%} ({block['correct']}/{block['n']}; 95% CI {low:.1%} to {high:.1%})"


def _facts(run: dict[str, Any]) -> list[tuple[str, str]]:
    samples, req, tokens = run.get("samples", {}), run.get("requests", {}), run.get("tokens", {})
    cost = run.get("cost_usd")
    kept = run.get("kept") or 0
    teacher = run.get("teacher", {})
    rows = [
        ("teacher", f"{teacher.get('backend', '?')}:{teacher.get('model', '?')}"),
        ("mode", str(run.get("mode", "cot"))),
        ("seeds", str(run.get("seeds", {}).get("count", "?"))),
        ("samples expected", str(samples.get("expected", "?"))),
        ("kept", str(kept)),
        ("rejected", ", ".join(f"{k} {v}" for k, v in sorted(run.get("rejected", {}).items())) or "none"),
        ("requests sent / ok / failed", f"{req.get('sent', 0)} / {req.get('succeeded', 0)} / {req.get('failed', 0)}"),
        ("tokens prompt / completion", f"{tokens.get('prompt', 0):,} / {tokens.get('completion', 0):,}"),
        ("cost", f"${cost:.4f}" if cost is not None else "not priced"),
        ("cost per kept example", f"${cost / kept:.5f}" if cost is not None and kept else "-"),
        ("teacher wall time", f"{run.get('wall_seconds', 0):.1f} s"),
    ]
    if run.get("stopped") not in (None, "done"):  # only when something stopped the run
        rows.insert(-1, ("stopped", str(run["stopped"])))
    if (run.get("requests") or {}).get("cached"):
        rows.insert(-1, ("samples from the response cache ($0)", str(run["requests"]["cached"])))
    train = run.get("train")
    if train and (train.get("skipped") or train.get("error")):  # a stage before may have kept nothing
        rows.append(("training", f"skipped: {train['skipped']}" if train.get("skipped") else f"failed: {train['error']}"))
    elif train:
        rows.append(("training", f"{train['method']} ({train.get('format', 'chat')}), {train['steps']} steps on "
                                 f"{train['examples']} examples, {train['seconds']:.0f} s on {train['device']}"))
    ev = run.get("eval") or {}
    for key in ("before", "after", "teacher"):
        if ev.get(key):
            rows.append((f"accuracy {key}", _acc(ev[key])))
    return rows


def _rounds(run: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Targeted rounds, one row each: round, new records, cost, probe and eval accuracy with intervals."""
    return [(str(r["round"]), str(r.get("new_records", 0)),
             f"${r['cost_usd']:.4f}" if r.get("cost_usd") is not None else "-",
             _acc(r.get("probe")), _acc(r.get("eval"))) for r in run.get("rounds") or []]


def build_report(run_dir: Path) -> tuple[Path, Path]:
    run = read_run(run_dir)
    if not run:
        raise FileNotFoundError(f"{run_dir}: no run.json; run `distilforge run` first")
    plots = _plots(run, run_dir)
    facts = _facts(run)
    try:
        samples = sample_rows(run_dir)
        data_section = data_html(samples)
    except Exception as exc:  # an unreadable Parquet file costs the Data section, not the report
        samples = None
        data_section = f'<section id="data"><h2>Data</h2><p>Could not read the rows: {html.escape(str(exc))}</p></section>'
    title = f"distilforge report: {run.get('name') or run_dir.name}"

    md = [f"# {title}", "", "| | |", "| --- | --- |"]
    md += [f"| {k} | {v} |" for k, v in facts]
    md += ["", "## Filters", "", "| step | in | out | rejected | seconds |", "| --- | ---: | ---: | ---: | ---: |"]
    md += [f"| {f['name']} | {f['in']} | {f['out']} | {f['in'] - f['out']} | {f['seconds']} |" for f in run.get("filters", [])]
    rounds = _rounds(run)
    if rounds:
        md += ["", "## Targeted rounds", "", "| round | new records | cost | probe accuracy | eval accuracy |",
               "| ---: | ---: | ---: | --- | --- |"]
        md += [f"| {' | '.join(r)} |" for r in rounds]
        if run.get("rounds_stopped"):
            md += ["", f"Stopped: {run['rounds_stopped']}."]
    for name, path in plots.items():
        md += ["", f"![{name}]({path.relative_to(run_dir)})"]
    if samples and (samples["kept"] or samples["rejected"]):
        md += data_markdown(samples)
    md_path = run_dir / "report.md"
    write_atomic(md_path, "\n".join(md) + "\n")

    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'

    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    widest = max([f["in"] for f in run.get("filters", [])] or [1]) or 1

    def funnel_bar(f: dict[str, Any]) -> str:  # the funnel as plain HTML: no plotting library needed
        passed, dropped = 100 * f["out"] / widest, 100 * (f["in"] - f["out"]) / widest
        return (f'<div class="bar"><span class="ok" style="width:{passed:.1f}%"></span>'
                f'<span class="no" style="width:{dropped:.1f}%"></span></div>')

    filter_rows = "".join(
        f"<tr><td>{html.escape(f['name'])}</td><td>{f['in']}</td><td>{f['out']}</td><td>{f['in'] - f['out']}</td>"
        f"<td>{f['seconds']}</td><td class='funnel'>{funnel_bar(f)}</td></tr>" for f in run.get("filters", []))
    figures = "".join(f"<figure>{img(p)}</figure>" for p in plots.values())
    rounds_section = ""
    if rounds:
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rounds)
        stopped = f"<p>Stopped: {html.escape(run['rounds_stopped'])}.</p>" if run.get("rounds_stopped") else ""
        rounds_section = ("<h2>Targeted rounds</h2><table><tr><th>round</th><th>new records</th><th>cost</th>"
                          f"<th>probe accuracy</th><th>eval accuracy</th></tr>{cells}</table>{stopped}")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #1d2733; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border-bottom: 1px solid #dde3ea; padding: .35rem .8rem; text-align: left; }}
td + td {{ text-align: right; }}
figure {{ margin: 1.5rem 0; }} img {{ max-width: 100%; }}
td.funnel {{ width: 16rem; }} .bar {{ display: flex; height: .8rem; background: #f1f4f8; }}
.bar .ok {{ background: #3b7dd8; }} .bar .no {{ background: #e0685a; }}
{DATA_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{rows}</table>
<h2>Filters</h2>
<table><tr><th>step</th><th>in</th><th>out</th><th>rejected</th><th>seconds</th><th>passed / rejected</th></tr>{filter_rows}</table>
{rounds_section}
<h2>Plots</h2>{figures or "<p>No plots yet.</p>"}
{data_section}
</body></html>
"""
    html_path = run_dir / "report.html"
    write_atomic(html_path, page)
    return html_path, md_path
