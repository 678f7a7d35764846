"""Kept and rejected records: streamed to JSONL while the run goes, then turned into HF datasets.

The final folders are written next to their destination and renamed into place, so a crash leaves the
previous dataset (or none), never a half-written one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distilforge.core.records import Record

KEPT_COLUMNS = [
    "messages", "seed_id", "sample_index", "question", "rationale", "answer", "gold", "answer_type",
    "teacher_model", "text", "finish_reason", "prompt_tokens", "completion_tokens",
    "mode", "template", "template_sha", "demo_ids", "vote_share",
    "instruction", "input", "output", "parent_id", "rouge_l_max", "judge_score", "judge_scores",
]
REJECTED_COLUMNS = [*KEPT_COLUMNS, "reject_reason", "reject_detail"]


def features(columns: list[str]) -> Any:
    from datasets import Features, List, Value

    types: dict[str, Any] = {
        "messages": List({"role": Value("string"), "content": Value("string")}),
        "sample_index": Value("int64"),
        "demo_ids": List(Value("string")),
        "vote_share": Value("float64"),
        "rouge_l_max": Value("float64"),
        "judge_score": Value("float64"),
        "prompt_tokens": Value("int64"),
        "completion_tokens": Value("int64"),
    }
    return Features({c: types.get(c, Value("string")) for c in columns})


class JsonlSink:
    """Append-only JSONL of rows, flushed per record so a crash keeps what was written."""

    def __init__(self, path: Path, columns: list[str]):
        self.path = path
        self.columns = columns
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("w", encoding="utf-8")

    def write(self, record: Record) -> None:
        row = record.to_row()
        self._fh.write(json.dumps({c: row.get(c) for c in self.columns}, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self) -> None:
        self._fh.close()


def _rows(path: str) -> Any:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def load_jsonl(jsonl: Path, columns: list[str], cache: Path) -> Any:
    """A Dataset over `jsonl`, streamed through Arrow into `cache` (not held in memory).

    The cache must be fresh per build: datasets caches generators by their arguments, and the same
    staging path on a resumed run would otherwise hand back the previous run's rows.
    """
    from datasets import Dataset

    if jsonl.stat().st_size:
        return Dataset.from_generator(_rows, gen_kwargs={"path": str(jsonl)}, features=features(columns),
                                      cache_dir=str(cache))
    return Dataset.from_dict({c: [] for c in columns}, features=features(columns))


def jsonl_to_dataset(jsonl: Path, columns: list[str], target: Path, parquet: Path) -> int:
    """Build a Dataset from `jsonl` and save it (and its Parquet) atomically."""
    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=jsonl.parent))
    try:
        ds = load_jsonl(jsonl, columns, cache)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp), num_shards=1 if len(ds) == 0 else None)  # 0 shards would not load back
        parquet.parent.mkdir(parents=True, exist_ok=True)
        parquet_tmp = parquet.with_name(parquet.name + ".tmp")
        ds.to_parquet(str(parquet_tmp))
        count = len(ds)
        del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    parquet_tmp.replace(parquet)
    return count


def _sorted_rows(jsonl: Path) -> Any:
    """Kept rows in (seed_id, sample_index) order, sorted on disk through Arrow (not in a Python list)."""
    cache = Path(tempfile.mkdtemp(prefix="sort-", dir=jsonl.parent))
    ds = load_jsonl(jsonl, REJECTED_COLUMNS, cache)
    return ds.sort(["seed_id", "sample_index"]), cache


def apply_global_filters(filters: list[Any], kept: Path, rejected: Path, counts: Any) -> Path:
    """Run whole-set filters (near-dup removal) over the kept rows in seed order; returns the new kept file."""
    out = kept.with_name("kept.final.jsonl")
    if not kept.stat().st_size:
        out.write_text("")
        return out
    ds, cache = _sorted_rows(kept)
    try:
        with out.open("w", encoding="utf-8") as keep_fh, rejected.open("a", encoding="utf-8") as reject_fh:
            for row in ds:
                for f in filters:
                    f.n_in += 1
                    detail = f.check_row(row)
                    if detail is not None:
                        f.reject(row, detail)
                        counts[f.name] += 1
                        reject_fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                        break
                    f.n_out += 1
                else:
                    keep_fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        del ds
        shutil.rmtree(cache, ignore_errors=True)
    return out


def write_dataset(kept: Path, run_dir: Path, validation_fraction: float, seed: int) -> int:
    """DIR/dataset as a DatasetDict (train + seeded validation), DIR/parquet/{train,validation}.parquet."""
    from datasets import DatasetDict

    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=kept.parent))
    try:
        ds = load_jsonl(kept, REJECTED_COLUMNS, cache).remove_columns(["reject_reason", "reject_detail"])
        n_val = round(len(ds) * validation_fraction) if len(ds) >= 20 else 0
        if n_val:
            parts = ds.train_test_split(test_size=n_val, seed=seed, shuffle=True)
            splits = DatasetDict({"train": parts["train"], "validation": parts["test"]})
        else:
            splits = DatasetDict({"train": ds, "validation": ds.select([])})
        target = run_dir / "dataset"
        tmp = target.with_name("dataset.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        splits.save_to_disk(str(tmp), num_shards={k: 1 for k in splits})
        parquet = run_dir / "parquet"
        parquet.mkdir(parents=True, exist_ok=True)
        for name, split in splits.items():
            split.to_parquet(str(parquet / f"{name}.parquet.tmp"))
        card = target / "README.md"
        old_card = card.read_text(encoding="utf-8") if card.exists() else None
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for name in splits:
            (parquet / f"{name}.parquet.tmp").replace(parquet / f"{name}.parquet")
        if old_card is not None:
            card.write_text(old_card, encoding="utf-8")  # rewritten right after, with this run's numbers
        count = len(ds)
        del ds, splits
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return count
