"""Kept, rejected and failed records: streamed to JSONL shards while the run goes, then assembled.

Each rank appends to its own shard files as records come (`.staging/rank-NNNNN/kept.jsonl`, ...), so
nothing is held in memory. At the end the shards are assembled through Arrow on disk (never a
Python list of all rows), sorted by (seed_id, sample_index) so the result does not depend on
arrival order or sharding. Final folders are written next to their destination and renamed into
place, so a crash leaves the previous dataset (or none), never a half-written one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distilforge.core import fastjson
from distilforge.schemas.records import Record

KEPT_COLUMNS = [
    "messages", "seed_id", "sample_index", "question", "rationale", "answer", "gold", "answer_type",
    "teacher_model", "text", "finish_reason", "prompt_tokens", "completion_tokens",
    "reasoning", "reasoning_tokens", "mode", "template", "template_sha", "demo_ids", "vote_share",
    "instruction", "input", "output", "parent_id", "rouge_l_max", "judge_score", "judge_scores", "round",
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
        "round": Value("int64"),
        "prompt_tokens": Value("int64"),
        "completion_tokens": Value("int64"),
        "reasoning_tokens": Value("int64"),
    }
    return Features({c: types.get(c, Value("string")) for c in columns})


class JsonlSink:
    """Append-only JSONL of rows (a shard), written as records come so a crash keeps what was written."""

    def __init__(self, path: Path, columns: list[str] | None = None):
        self.path = path
        self.columns = columns
        self.count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("wb")  # UTF-8 JSON lines, written as bytes (orjson)

    def write(self, record: Record) -> None:
        row = record.to_row()
        assert self.columns is not None
        self._fh.write(fastjson.dumps_line({c: row.get(c) for c in self.columns}))
        self.count += 1

    def write_row(self, row: dict[str, Any]) -> None:
        self._fh.write(fastjson.dumps_line(row))
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def load_jsonl(paths: list[Path], columns: list[str], cache: Path) -> Any:
    """A Dataset over the shards, streamed through Arrow into `cache` (not held in memory).

    pyarrow's JSON reader parses the shards in blocks with the dataset's schema, and the batches are
    written to one Arrow file that the Dataset memory-maps: fast, and flat in memory. The cache must
    be fresh per build, so a resumed run never sees an earlier build's rows.
    """
    import pyarrow as pa
    import pyarrow.json as pj
    from datasets import Dataset, DatasetInfo

    feats = features(columns)
    schema = feats.arrow_schema
    target = cache / "data.arrow"
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for path in paths:
            if not path.exists() or not path.stat().st_size:
                continue
            # Small blocks on one thread: Arrow's allocator keeps what it touched, so big parallel
            # blocks would make the process's memory grow with the file.
            for batch in pj.open_json(str(path), parse_options=options,
                                      read_options=pj.ReadOptions(block_size=1 << 20, use_threads=False)):
                writer.write_batch(pa.RecordBatch.from_arrays([batch.column(n) for n in schema.names], schema=schema))
    pa.default_memory_pool().release_unused()
    return Dataset.from_file(str(target), info=DatasetInfo(features=feats), in_memory=False)


def _sorted(ds: Any) -> Any:
    return ds.sort(["seed_id", "sample_index"]) if len(ds) > 1 else ds


def sorted_rows(paths: list[Path], scratch: Path) -> Iterator[dict[str, Any]]:
    """Every row of the shards in (seed_id, sample_index) order, sorted on disk through Arrow."""
    cache = Path(tempfile.mkdtemp(prefix="sort-", dir=scratch))
    try:
        ds = _sorted(load_jsonl(paths, REJECTED_COLUMNS, cache))
        yield from ds
        del ds
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _write_parquet(saved: Path, target: Path) -> None:
    """Parquet from a split saved by `save_to_disk`, in record batches (never the whole table at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(saved.glob("*.arrow"))
    schema = None
    writer = None
    try:
        for file in files:
            with pa.OSFile(str(file)) as source:  # read in order, not mapped: memory stays flat
                reader = pa.ipc.open_stream(source)
                schema = schema or reader.schema
                if writer is None:
                    writer = pq.ParquetWriter(str(target), schema)
                for batch in reader:
                    writer.write_batch(batch, row_group_size=10_000)
        if writer is None:  # an empty split still gets a (schema-only) file
            import datasets

            empty = datasets.load_from_disk(str(saved))
            pq.write_table(empty.data.table, str(target))
    finally:
        if writer is not None:
            writer.close()


def jsonl_to_dataset(paths: list[Path], columns: list[str], target: Path, parquet: Path) -> int:
    """Build a sorted Dataset from the shards and save it (and its Parquet) atomically."""
    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=target.parent))
    tmp = target.with_name(target.name + ".tmp")
    parquet_tmp = parquet.with_name(parquet.name + ".tmp")
    try:
        ds = _sorted(load_jsonl(paths, columns, cache))
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp), num_shards=1)
        count = len(ds)
        del ds
        parquet.parent.mkdir(parents=True, exist_ok=True)
        _write_parquet(tmp, parquet_tmp)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    parquet_tmp.replace(parquet)
    return count


def write_dataset(kept: list[Path], run_dir: Path, validation_fraction: float, seed: int) -> dict[str, int]:
    """DIR/dataset as a DatasetDict (train + validation), DIR/parquet/{train,validation}.parquet.

    The split is by seed, not by row: a seed's samples all go to validation when a stable hash of its
    `seed_id` (salted with `seed`) falls below `validation_fraction` (`in_validation`), so no question
    is in both splits. Fewer than 20 rows, or a hash that would leave train empty, give no validation.
    Rows are in (seed_id, sample_index) order in both splits. Everything goes through Arrow files on
    disk in batches, so memory does not grow with the rows.
    """
    import numpy as np
    from datasets import DatasetDict

    from distilforge.core.seeds import in_validation

    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=run_dir))
    target = run_dir / "dataset"
    tmp = target.with_name("dataset.tmp")
    parquet = run_dir / "parquet"
    try:
        ds = _sorted(load_jsonl(kept, REJECTED_COLUMNS, cache)).remove_columns(["reject_reason", "reject_detail"])
        n = len(ds)
        held = np.zeros(n, dtype=bool)
        if n >= 20 and validation_fraction > 0:
            ids = (i for batch in ds.select_columns(["seed_id"]).iter(batch_size=10_000) for i in batch["seed_id"])
            held = np.fromiter((in_validation(i, validation_fraction, seed) for i in ids), dtype=bool, count=n)
            if held.all():
                held[:] = False
        splits = DatasetDict({"train": ds.select(np.flatnonzero(~held)), "validation": ds.select(np.flatnonzero(held))})
        shutil.rmtree(tmp, ignore_errors=True)
        splits.save_to_disk(str(tmp), num_shards={k: 1 for k in splits})
        counts = {name: len(split) for name, split in splits.items()}
        del ds, splits
        parquet.mkdir(parents=True, exist_ok=True)
        for name in counts:
            _write_parquet(tmp / name, parquet / f"{name}.parquet.tmp")
        card = target / "README.md"
        old_card = card.read_text(encoding="utf-8") if card.exists() else None
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for name in counts:
            (parquet / f"{name}.parquet.tmp").replace(parquet / f"{name}.parquet")
        if old_card is not None:
            card.write_text(old_card, encoding="utf-8")  # rewritten right after, with this run's numbers
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return counts


FAILED_COLUMNS = ["seed_id", "sample_index", "error"]


def write_sorted_jsonl(paths: list[Path], columns: list[str], target: Path) -> int:
    """The rows of every shard in (seed_id, sample_index) order as one JSONL file, written atomically."""
    tmp = target.with_name(target.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as out:
        if any(p.exists() and p.stat().st_size for p in paths):
            cache = Path(tempfile.mkdtemp(prefix="sort-", dir=target.parent))
            try:
                ds = _sorted(load_jsonl(paths, columns, cache))
                for row in ds:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                    count += 1
                del ds
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    tmp.replace(target)
    return count
