"""Kept, rejected and failed records: streamed to JSONL shards while the run goes, then assembled.

Each rank appends to its own shard files as records come (`.staging/rank-NNNNN/kept.jsonl`, ...), so
nothing is held in memory. At the end the shards are assembled through Arrow on disk (never a
Python list of all rows), sorted by (seed_id, sample_index) so the result does not depend on
arrival order or sharding. Final folders are written next to their destination and renamed into
place, so a crash leaves the previous dataset (or none), never a half-written one.
"""

from __future__ import annotations

import json
import secrets
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


# The columns' types in `datasets`' own notation: `dataset/` and `rejected/` are written in the layout
# of `Dataset.save_to_disk` with pyarrow alone, so a run never imports `datasets` (0.8 s of start-up,
# pandas included); tests/test_dataset_files.py loads them back with `datasets.load_from_disk`.
_STRING = {"dtype": "string", "_type": "Value"}
_FEATURES: dict[str, dict[str, Any]] = {
    "messages": {"feature": {"role": _STRING, "content": _STRING}, "_type": "List"},
    "demo_ids": {"feature": _STRING, "_type": "List"},
    **{c: {"dtype": "int64", "_type": "Value"}
       for c in ("sample_index", "round", "prompt_tokens", "completion_tokens", "reasoning_tokens")},
    **{c: {"dtype": "float64", "_type": "Value"} for c in ("vote_share", "rouge_l_max", "judge_score")},
}
_ROWS_PER_BATCH = 1000  # `datasets`' writer batch size
_GATHER = _ROWS_PER_BATCH  # rows gathered from the sorted table at a time (see _taken)
_REMAP = 16  # gathers per mapping of the Arrow file (see _taken)
_DATA_FILE = "data-00000-of-00001.arrow"


def features(columns: list[str]) -> dict[str, Any]:
    """The columns' features as `datasets.Features.to_dict()` writes them."""
    return {c: _FEATURES.get(c, _STRING) for c in columns}


def _arrow_type(feature: dict[str, Any]) -> Any:
    import pyarrow as pa

    if feature["_type"] == "List":
        inner = feature["feature"]
        item = pa.struct([(k, _arrow_type(v)) for k, v in inner.items()]) if "_type" not in inner else _arrow_type(inner)
        return pa.list_(item)
    return {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}[feature["dtype"]]


def schema(columns: list[str]) -> Any:
    """The Arrow schema `datasets` gives these features, its features in the metadata as its writer puts them."""
    import pyarrow as pa

    feats = features(columns)
    meta = {"huggingface": json.dumps({"info": {"features": feats}})}
    return pa.schema([(c, _arrow_type(f)) for c, f in feats.items()], metadata=meta)


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


def load_jsonl(paths: list[Path], columns: list[str], cache: Path) -> Path:
    """The shards as one Arrow stream file in `cache` (never held in memory; `_mapped` reads it back).

    pyarrow's JSON reader parses the shards in blocks with the dataset's schema, and the batches are
    written to one Arrow file: fast, and flat in memory. The cache must be fresh per build, so a
    resumed run never sees an earlier build's rows.
    """
    import pyarrow as pa
    import pyarrow.json as pj

    arrow_schema = schema(columns)
    target = cache / "data.arrow"
    options = pj.ParseOptions(explicit_schema=arrow_schema, unexpected_field_behavior="ignore")
    with pa.OSFile(str(target), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema) as writer:
        for path in paths:
            if not path.exists():
                continue
            # About 1 MiB of whole lines at a time, parsed on one thread: `pj.open_json` reads ahead
            # without bound (the whole shard at once), and Arrow's allocator keeps what it touched,
            # so the process's memory would grow with the file.
            with path.open("rb") as shard:
                while lines := shard.readlines(1 << 20):
                    block = b"".join(lines)
                    read = pj.ReadOptions(block_size=len(block) + 1, use_threads=False)
                    table = pj.read_json(pa.BufferReader(block), read_options=read, parse_options=options)
                    for batch in table.to_batches():
                        writer.write_batch(pa.RecordBatch.from_arrays([batch.column(n) for n in arrow_schema.names],
                                                                      schema=arrow_schema))
    pa.default_memory_pool().release_unused()
    return target


def _mapped(file: Path) -> Any:
    """The Arrow stream file as a table over a memory map (nothing copied)."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(str(file))).read_all()


def _indices(rows: Any) -> Any:
    """An Arrow int64 array over numpy row numbers, not through `pa.array`: that one imports pandas
    (0.25 s) to ask whether its argument is a Series."""
    import numpy as np
    import pyarrow as pa

    rows = np.ascontiguousarray(rows, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(rows), [None, pa.py_buffer(rows)])


def _order(table: Any) -> Any:
    """Row numbers in (seed_id, sample_index) order, nulls last (what `Dataset.sort` gave), as numpy."""
    import numpy as np
    import pyarrow.compute as pc

    keys = [("seed_id", "ascending"), ("sample_index", "ascending")]
    rows = pc.sort_indices(table.select(["seed_id", "sample_index"]), sort_keys=keys)  # uint64, no nulls
    # Read through its buffer: `to_numpy` too would import pandas.
    return np.frombuffer(rows.buffers()[1], dtype=np.uint64, count=len(rows), offset=rows.offset * 8).astype(np.int64)


def _taken(file: Path, rows: Any) -> Iterator[Any]:
    """The file's `rows` (numpy row numbers, in that order) as tables of up to `_GATHER` rows.

    Not `table.take(rows)`: on a table of many chunks Arrow concatenates each whole column first, so
    memory would grow with the dataset. Rows are taken from the memory-mapped chunk they live in, then
    put back in the order asked for. The file is mapped afresh every `_REMAP` gathers: the pages a
    mapping touched count in the process's RSS while it lives, so one mapping would grow with the file.
    """
    import numpy as np
    import pyarrow as pa

    for i in range(0, len(rows), _GATHER):
        if i % (_GATHER * _REMAP) == 0:
            table = _mapped(file)
            chunks = table.to_batches()
            starts = np.cumsum([0] + [b.num_rows for b in chunks])
        wanted = rows[i:i + _GATHER]
        chunk = np.searchsorted(starts, wanted, side="right") - 1
        by_chunk = np.argsort(chunk, kind="stable")
        groups = np.split(by_chunk, np.flatnonzero(np.diff(chunk[by_chunk])) + 1)
        parts = [chunks[chunk[g[0]]].take(_indices(wanted[g] - starts[chunk[g[0]]])) for g in groups if len(g)]
        gathered = pa.Table.from_batches(parts, schema=table.schema).combine_chunks()
        back = np.empty_like(by_chunk)
        back[by_chunk] = np.arange(len(by_chunk))
        yield gathered.take(_indices(back))


def _save(file: Path, rows: Any, columns: list[str], folder: Path) -> int:
    """`rows` of the Arrow `file` in the layout of `Dataset.save_to_disk(folder, num_shards=1)`: one Arrow
    stream file, `state.json` and `dataset_info.json`, as `datasets` 5 writes them."""
    import pyarrow as pa

    arrow_schema = schema(columns)
    folder.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(folder / _DATA_FILE), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema) as writer:
        for part in _taken(file, rows):
            writer.write_table(part.select(columns).replace_schema_metadata(arrow_schema.metadata),
                               max_chunksize=_ROWS_PER_BATCH)
    state = {"_data_files": [{"filename": _DATA_FILE}], "_fingerprint": secrets.token_hex(8), "_format_columns": None,
             "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    info = {"citation": "", "description": "", "features": features(columns), "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return len(rows)


def sorted_rows(paths: list[Path], scratch: Path) -> Iterator[dict[str, Any]]:
    """Every row of the shards in (seed_id, sample_index) order, sorted on disk through Arrow."""
    cache = Path(tempfile.mkdtemp(prefix="sort-", dir=scratch))
    try:
        file = load_jsonl(paths, REJECTED_COLUMNS, cache)
        for part in _taken(file, _order(_mapped(file))):
            yield from part.to_pylist()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def _write_parquet(saved: Path, target: Path) -> None:
    """Parquet from a saved split, in record batches (never the whole table at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pa.OSFile(str(saved / _DATA_FILE)) as source:  # read in order, not mapped: memory stays flat
        reader = pa.ipc.open_stream(source)
        with pq.ParquetWriter(str(target), reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch, row_group_size=10_000)


def jsonl_to_dataset(paths: list[Path], columns: list[str], target: Path, parquet: Path) -> int:
    """Build a sorted dataset from the shards and save it (and its Parquet) atomically."""
    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=target.parent))
    tmp = target.with_name(target.name + ".tmp")
    parquet_tmp = parquet.with_name(parquet.name + ".tmp")
    try:
        file = load_jsonl(paths, columns, cache)
        shutil.rmtree(tmp, ignore_errors=True)
        count = _save(file, _order(_mapped(file)), columns, tmp)
        parquet.parent.mkdir(parents=True, exist_ok=True)
        _write_parquet(tmp, parquet_tmp)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    parquet_tmp.replace(parquet)
    return count


def _held(table: Any, order: Any, validation_fraction: float, seed: int) -> Any:
    """Which sorted rows go to validation: a numpy mask over `order` (see write_dataset)."""
    import numpy as np

    from distilforge.core.seeds import in_validation

    n = len(order)
    held = np.zeros(n, dtype=bool)
    if n >= 20 and validation_fraction > 0:
        ids = table.column("seed_id")
        for at in range(0, n, 10_000):
            part = ids.take(_indices(order[at:at + 10_000])).to_pylist()
            held[at:at + len(part)] = [in_validation(i, validation_fraction, seed) for i in part]
        if held.all():
            held[:] = False
    return held


def write_dataset(kept: list[Path], run_dir: Path, validation_fraction: float, seed: int) -> dict[str, int]:
    """DIR/dataset as a DatasetDict (train + validation), DIR/parquet/{train,validation}.parquet.

    The split is by seed, not by row: a seed's samples all go to validation when a stable hash of its
    `seed_id` (salted with `seed`) falls below `validation_fraction` (`in_validation`), so no question
    is in both splits. Fewer than 20 rows, or a hash that would leave train empty, give no validation.
    Rows are in (seed_id, sample_index) order in both splits. Everything goes through Arrow files on
    disk in batches, so memory does not grow with the rows.
    """
    cache = Path(tempfile.mkdtemp(prefix="arrow-", dir=run_dir))
    target = run_dir / "dataset"
    tmp = target.with_name("dataset.tmp")
    parquet = run_dir / "parquet"
    try:
        file = load_jsonl(kept, REJECTED_COLUMNS, cache)
        table = _mapped(file)
        order = _order(table)
        held = _held(table, order, validation_fraction, seed)
        del table  # its mapping's pages (see _taken)
        splits = {"train": order[~held], "validation": order[held]}
        shutil.rmtree(tmp, ignore_errors=True)
        counts = {name: _save(file, rows, KEPT_COLUMNS, tmp / name) for name, rows in splits.items()}
        (tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(splits)}), encoding="utf-8")
        del order, splits
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
                file = load_jsonl(paths, columns, cache)
                for part in _taken(file, _order(_mapped(file))):
                    for row in part.to_pylist():
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                        count += 1
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    tmp.replace(target)
    return count
