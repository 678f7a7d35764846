"""The end-of-run table: what was kept, why the rest was dropped, cost, accuracy; and `eval`'s own table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _acc(block: dict[str, Any] | None) -> str:
    if not block:
        return "-"
    low, high = block.get("ci95", [0, 0])
    text = f"{block['accuracy']:.1%} ({block['correct']}/{block['n']}, 95% CI {low:.0%}-{high:.0%})"
    parsed, n = block.get("parsed"), block.get("n") or 0
    if parsed is not None and n and parsed * 2 < n:  # most answers unreadable: the score says little
        text += f" [yellow]answers parsed: {parsed}/{n} - most answers unreadable[/yellow]"
    return text


def print_eval(run: dict[str, Any], console: Console) -> None:
    """`distilforge eval`'s own table: the student's accuracy per eval set, before and after training."""
    ev = run.get("eval") or {}
    table = Table(title=f"distilforge eval {run.get('name') or ''}".strip(), show_header=True)
    for col in ("set", "before", "after"):
        table.add_column(col, justify="left" if col == "set" else "right")
    table.add_row("all", _acc(ev.get("before")), _acc(ev.get("after")))
    before, after = (ev.get("before") or {}).get("sets") or {}, (ev.get("after") or {}).get("sets") or {}
    for name in dict.fromkeys([*before, *after]):
        table.add_row(name, _acc(before.get(name)), _acc(after.get(name)))
    console.print(table)


def print_run_table(run: dict[str, Any], console: Console) -> None:
    scope = f" ({run['scope']})" if run.get("scope") and run.get("rounds") else ""
    table = Table(title=f"distilforge run {run.get('name') or ''}".strip() + scope, show_header=True)
    table.add_column("what")
    table.add_column("value", justify="right")
    samples = run.get("samples", {})
    req = run.get("requests", {})
    table.add_row("samples expected", str(samples.get("expected", "-")))
    if run.get("rejected_seeds"):
        table.add_row("seed lines skipped (rejected_seeds.jsonl)", f"[yellow]{run['rejected_seeds']}[/yellow]")
    table.add_row("kept", f"[green]{run.get('kept', 0)}[/green]")
    for reason, count in sorted(run.get("rejected", {}).items(), key=lambda kv: -kv[1]):
        table.add_row(f"  rejected: {reason}", str(count))
    if samples.get("failed"):
        table.add_row("  failed requests' samples", f"[red]{samples['failed']}[/red]")
    table.add_row("requests sent / ok / failed", f"{req.get('sent', 0)} / {req.get('succeeded', 0)} / {req.get('failed', 0)}")
    if samples.get("from_journal"):
        table.add_row("samples reused from journal", str(samples["from_journal"]))
    if req.get("cached"):
        table.add_row("samples from the response cache ($0)", str(req["cached"]))
    if req.get("retried"):
        table.add_row("retries (of them 429s)", f"{req['retried']} ({req.get('rate_limited', 0)})")
    tokens = run.get("tokens", {})
    table.add_row("tokens prompt / completion", f"{tokens.get('prompt', 0)} / {tokens.get('completion', 0)}")
    if run.get("cost_usd") is not None:
        kept = run.get("kept") or 0
        per = f" (${run['cost_usd'] / kept:.5f} per kept)" if kept else ""
        table.add_row("cost (whole run folder)", f"${run['cost_usd']:.4f}{per}")
        mine = (run.get("this_invocation") or {}).get("cost_usd")
        if mine is not None and abs(mine - run["cost_usd"]) > 1e-9:
            table.add_row("  of it, this command", f"${mine:.4f}")
        cap = (run.get("budget") or {}).get("max_usd")
        if cap:
            table.add_row("budget used (all runs)", f"${run['budget']['spent_usd_total']:.4f} of ${cap}")
    if run.get("stopped") not in (None, "done"):
        table.add_row("stopped", f"[yellow]{run['stopped']}[/yellow]")
    if samples.get("not_sent"):
        table.add_row("samples not sent (stop)", str(samples["not_sent"]))
    table.add_row("teacher wall time", f"{run.get('wall_seconds', 0):.1f} s")
    train = run.get("train")
    if train and train.get("skipped"):
        table.add_row("training", f"skipped: {train['skipped']}")
    elif train:
        table.add_row("training", f"{train['steps']} steps, loss {train.get('first_loss')} -> {train.get('last_loss')}")
    ev = run.get("eval") or {}
    if ev:
        table.add_row("student accuracy before", _acc(ev.get("before")))
        table.add_row("student accuracy after", _acc(ev.get("after")))
    console.print(table)
    steps = run.get("filters") or []
    if steps:
        report = Table(title="filters, in order", show_header=True)
        for col in ("step", "in", "out", "rejected", "seconds"):
            report.add_column(col, justify="left" if col == "step" else "right")
        for f in steps:
            report.add_row(f["name"], str(f["in"]), str(f["out"]), str(f["in"] - f["out"]), f"{f['seconds']:.3f}")
        console.print(report)
