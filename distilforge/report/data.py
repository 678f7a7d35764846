"""The report's Data section: a sample of kept rows and, per reject reason, a sample of rejects.

People judge distilled data by reading it. The sample is bounded (`KEPT` kept rows, `PER_REASON`
rejects per reason, each text cut at `MAX_CHARS`), drawn with a fixed seed so a rebuilt report shows
the same rows, and read from the Parquet files a row group at a time: only the `reject_reason` column
is read whole, so memory stays flat however large the run. Rows are untrusted text: everything is
escaped, and the page filters them with a few lines of inline JavaScript (no server, no network).
"""

from __future__ import annotations

import html
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

KEPT = 20
PER_REASON = 10
MAX_CHARS = 1500
SHOWN = ("seed_id", "sample_index", "question", "instruction", "input", "rationale", "answer", "gold", "text",
         "output", "judge_score", "mode", "reject_reason", "reject_detail")


def _reservoir(rng: random.Random, sample: list[int], seen: int, index: int, size: int) -> None:
    """Keep `index` in `sample` with probability size/seen (Algorithm R): a uniform sample in one pass."""
    if len(sample) < size:
        sample.append(index)
    else:
        j = rng.randrange(seen)
        if j < size:
            sample[j] = index


def _rows_at(path: Path, indices: list[int]) -> list[dict[str, Any]]:
    """The rows at `indices` (file order), reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    columns = [c for c in SHOWN if c in pf.schema_arrow.names]
    wanted, rows, start = sorted(set(indices)), [], 0
    k = 0
    for group in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(group).num_rows
        local = []
        while k < len(wanted) and wanted[k] < start + n:
            local.append(wanted[k] - start)
            k += 1
        if local:
            table = pf.read_row_group(group, columns=columns)
            rows += [table.slice(i, 1).to_pylist()[0] for i in local]  # `take` of a list would import pandas
        start += n
    return rows


def sample_rows(run_dir: Path, kept: int = KEPT, per_reason: int = PER_REASON,
                seed: int = 0) -> dict[str, Any]:
    """{"kept": rows, "kept_total": n, "rejected": {reason: rows}, "rejected_total": {reason: n}}."""
    import pyarrow.parquet as pq

    parquet = run_dir / "parquet"
    out: dict[str, Any] = {"kept": [], "kept_total": 0, "rejected": {}, "rejected_total": {}}
    splits = [(name, parquet / f"{name}.parquet") for name in ("train", "validation")]
    sizes = [(name, path, pq.ParquetFile(path).metadata.num_rows) for name, path in splits if path.exists()]
    total = sum(n for _, _, n in sizes)
    chosen = sorted(random.Random(seed).sample(range(total), min(kept, total)))
    start = 0
    for name, path, n in sizes:  # both splits as one sequence, so every kept row has the same chance
        rows = _rows_at(path, [i - start for i in chosen if start <= i < start + n])
        out["kept"] += [{**row, "split": name} for row in rows]
        start += n
    out["kept"].sort(key=lambda r: (str(r.get("seed_id")), r.get("sample_index") or 0))
    out["kept_total"] = total
    rejected = parquet / "rejected.parquet"
    if rejected.exists():
        pf = pq.ParquetFile(rejected)
        if "reject_reason" in pf.schema_arrow.names:
            rng = random.Random(seed)
            by_reason: dict[str, list[int]] = defaultdict(list)
            seen: dict[str, int] = defaultdict(int)
            index = 0
            for batch in pf.iter_batches(batch_size=8192, columns=["reject_reason"]):
                for reason in batch.column(0).to_pylist():
                    reason = reason or "unknown"
                    seen[reason] += 1
                    _reservoir(rng, by_reason[reason], seen[reason], index, per_reason)
                    index += 1
            rows = _rows_at(rejected, [i for sample in by_reason.values() for i in sample])
            for row in rows:
                out["rejected"].setdefault(row.get("reject_reason") or "unknown", []).append(row)
            out["rejected_total"] = dict(sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])))
    return out


def _cut(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f" … [{len(text) - MAX_CHARS:,} more characters]"


def _field(label: str, value: Any, block: bool = False) -> str:
    if value is None or value == "":
        return ""
    body = html.escape(_cut(value))
    if block:
        return f'<div class="field"><span class="label">{label}</span><pre>{body}</pre></div>'
    return f'<div class="field"><span class="label">{label}</span> {body}</div>'


def _sample_html(row: dict[str, Any], reason: str) -> str:
    kept = reason == "kept"
    tag = "kept" if kept else html.escape(reason)
    where = f"seed {html.escape(str(row.get('seed_id')))} · sample {html.escape(str(row.get('sample_index')))}"
    if row.get("split"):
        where += f" · {html.escape(row['split'])}"
    if row.get("judge_score") is not None:
        where += f" · judge {html.escape(str(row['judge_score']))}"
    parts = [f'<article class="sample" data-reason="{html.escape(reason, quote=True)}">',
             f'<header><span class="tag {"ok" if kept else "no"}">{tag}</span> <span class="where">{where}</span></header>',
             _field("question", row.get("question") or row.get("instruction"), block=True),
             _field("input", row.get("input"), block=True)]
    if not kept:
        parts.append(_field("why", row.get("reject_detail")))
    if row.get("output") is not None:  # instruction modes
        parts.append(_field("output", row["output"], block=True))
    elif kept and row.get("rationale"):
        parts.append(_field("rationale", row["rationale"], block=True))
    else:
        parts.append(_field("teacher", row.get("text"), block=True))
    if row.get("answer") is not None or row.get("gold") is not None:
        answer, gold = row.get("answer"), row.get("gold")
        parts.append(_field("answer", f"{'-' if answer is None else answer} · gold {'-' if gold is None else gold}"))
    parts.append("</article>")
    return "".join(p for p in parts if p)


# Plain inline JavaScript: a reason selector and a text search; `#reason=...&q=...` in the URL presets them.
SCRIPT = """<script>
(function () {
  var select = document.getElementById("data-reason"), search = document.getElementById("data-search");
  var count = document.getElementById("data-count"), rows = document.querySelectorAll("#data-rows .sample");
  function apply() {
    var reason = select.value, q = search.value.toLowerCase(), shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var row = rows[i];
      var ok = (reason === "all" || row.getAttribute("data-reason") === reason) &&
               (!q || row.textContent.toLowerCase().indexOf(q) >= 0);
      row.hidden = !ok;
      if (ok) shown++;
    }
    count.textContent = shown + " of " + rows.length + " sampled rows shown";
  }
  function fromHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    if (params.has("reason")) select.value = params.get("reason");
    if (params.has("q")) search.value = params.get("q");
    if (select.selectedIndex < 0) select.value = "all";
    apply();
  }
  select.addEventListener("change", apply);
  search.addEventListener("input", apply);
  window.addEventListener("hashchange", fromHash);
  fromHash();
})();
</script>"""

STYLE = """
#data-controls { display: flex; gap: .8rem; align-items: center; margin: 1rem 0; flex-wrap: wrap; }
#data-controls input { flex: 1; min-width: 12rem; padding: .3rem .5rem; }
.sample { border: 1px solid #dde3ea; border-radius: 6px; padding: .6rem .8rem; margin: .7rem 0; }
.sample header { font-size: .85rem; color: #52606d; margin-bottom: .3rem; }
.sample .tag { display: inline-block; padding: 0 .45rem; border-radius: 4px; color: #fff; font-weight: 600; }
.sample .tag.ok { background: #3b7dd8; } .sample .tag.no { background: #e0685a; }
.sample .field { margin: .25rem 0; } .sample .label { font-weight: 600; font-size: .85rem; color: #52606d; }
.sample pre { white-space: pre-wrap; word-break: break-word; margin: .15rem 0; font-size: .85rem;
              background: #f6f8fa; padding: .4rem .5rem; border-radius: 4px; max-height: 18rem; overflow: auto; }
"""


def data_html(samples: dict[str, Any]) -> str:
    """The section's HTML: controls, the sampled rows, and the filter script (or a line saying there are none)."""
    kept, rejected = samples["kept"], samples["rejected"]
    if not kept and not rejected:
        return '<section id="data"><h2>Data</h2><p>No rows yet.</p></section>'
    totals = samples["rejected_total"]
    options = [f'<option value="all">all ({len(kept) + sum(len(r) for r in rejected.values())} sampled)</option>',
               f'<option value="kept">kept ({len(kept)} of {samples["kept_total"]:,})</option>']
    options += [f'<option value="{html.escape(reason, quote=True)}">rejected: {html.escape(reason)} '
                f'({len(rejected.get(reason, []))} of {n:,})</option>' for reason, n in totals.items()]
    rows = [_sample_html(row, "kept") for row in kept]
    for reason in totals:
        rows += [_sample_html(row, reason) for row in rejected.get(reason, [])]
    return (
        '<section id="data"><h2>Data</h2>'
        f"<p>A sample to read: {len(kept)} kept rows drawn at random, and up to {PER_REASON} rejects per reason "
        "with the filter's detail. Texts are cut at "
        f"{MAX_CHARS:,} characters; the whole data is in <code>parquet/</code>.</p>"
        '<div id="data-controls"><label>show <select id="data-reason">' + "".join(options) + "</select></label>"
        '<input id="data-search" type="search" placeholder="search the sampled rows" aria-label="search">'
        '<span id="data-count"></span></div>'
        '<div id="data-rows">' + "".join(rows) + "</div>" + SCRIPT + "</section>"
    )


def data_markdown(samples: dict[str, Any]) -> list[str]:
    """A few lines for report.md: the sample sizes (the rows themselves are in report.html)."""
    lines = ["", "## Data", "", f"Sampled in report.html: {len(samples['kept'])} of {samples['kept_total']:,} kept rows"]
    for reason, n in samples["rejected_total"].items():
        lines.append(f"- rejected `{reason}`: {len(samples['rejected'].get(reason, []))} of {n:,} sampled")
    return lines
