"""dataset/ and rejected/ are written with pyarrow alone in the layout of `datasets`' `save_to_disk`,
so a run never imports `datasets` (0.8 s of start-up); `datasets.load_from_disk` reads them back."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from datasets import Features, List, Value

from distilforge.pipeline.dataset_writer import (
    KEPT_COLUMNS,
    REJECTED_COLUMNS,
    jsonl_to_dataset,
    sorted_rows,
    write_dataset,
)

# What the columns were when `datasets` wrote them (the earlier `features()`).
TYPES = {
    "messages": List({"role": Value("string"), "content": Value("string")}),
    "demo_ids": List(Value("string")),
    **{c: Value("int64") for c in ("sample_index", "round", "prompt_tokens", "completion_tokens", "reasoning_tokens")},
    **{c: Value("float64") for c in ("vote_share", "rouge_l_max", "judge_score")},
}


def expected_features(columns: list[str]) -> Features:
    return Features({c: TYPES.get(c, Value("string")) for c in columns})


def shards(folder: Path, n: int) -> tuple[list[Path], list[dict]]:
    """n rows over three shards in no particular order; ~3 MB, so Arrow reads them in several chunks."""
    rnd = random.Random(n)
    pairs = rnd.sample([(f"seed-{s:05d}", i) for s in range(n) for i in range(2)], n)
    rows = [{"seed_id": s, "sample_index": i, "question": "q" * rnd.randrange(800), "answer": None if k % 5 else str(k),
             "messages": [{"role": "user", "content": "é" * rnd.randrange(40)}, {"role": "assistant", "content": "a"}],
             "demo_ids": ["d1", "d2"] if k % 3 else None, "vote_share": 0.5 if k % 2 else None, "round": 1,
             "reject_reason": "wrong_answer"} for k, (s, i) in enumerate(pairs)]
    paths = []
    for k in range(3):
        path = folder / f"shard{k}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows[k::3]))
        paths.append(path)
    return paths, rows


def in_order(rows: list[dict], columns: list[str]) -> list[dict]:
    return [{c: r.get(c) for c in columns} for r in sorted(rows, key=lambda r: (r["seed_id"], r["sample_index"]))]


def test_dataset_folder_loads_with_datasets_sorted_and_split_by_seed(tmp_path: Path) -> None:
    paths, rows = shards(tmp_path, 6000)
    counts = write_dataset(paths, tmp_path, 0.2, 7)
    splits = datasets.load_from_disk(str(tmp_path / "dataset"))
    assert list(splits) == ["train", "validation"]
    assert counts == {name: len(split) for name, split in splits.items()} and sum(counts.values()) == 6000
    assert counts["validation"] > 0
    for name, split in splits.items():
        assert split.features == expected_features(KEPT_COLUMNS)
        got = split.to_list()
        assert got == sorted(got, key=lambda r: (r["seed_id"], r["sample_index"]))
        assert pq.read_table(tmp_path / "parquet" / f"{name}.parquet").to_pylist() == got
    train_seeds = {r["seed_id"] for r in splits["train"]}
    assert not train_seeds & {r["seed_id"] for r in splits["validation"]}
    merged = in_order([*splits["train"].to_list(), *splits["validation"].to_list()], KEPT_COLUMNS)
    assert merged == in_order(rows, KEPT_COLUMNS)


def test_rejected_folder_and_sorted_rows(tmp_path: Path) -> None:
    paths, rows = shards(tmp_path, 3000)
    assert jsonl_to_dataset(paths, REJECTED_COLUMNS, tmp_path / "rejected", tmp_path / "rejected.parquet") == 3000
    rejected = datasets.load_from_disk(str(tmp_path / "rejected"))
    assert rejected.features == expected_features(REJECTED_COLUMNS)
    assert rejected.to_list() == in_order(rows, REJECTED_COLUMNS)
    assert list(sorted_rows(paths, tmp_path)) == in_order(rows, REJECTED_COLUMNS)


def test_writing_the_dataset_imports_neither_datasets_nor_pandas(tmp_path: Path) -> None:
    shards(tmp_path, 50)
    code = (
        "import sys; from pathlib import Path; from distilforge.pipeline.dataset_writer import write_dataset, jsonl_to_dataset, "
        "REJECTED_COLUMNS\n"
        f"folder = Path({str(tmp_path)!r}); paths = sorted(folder.glob('shard*.jsonl'))\n"
        "write_dataset(paths, folder, 0.2, 7)\n"
        "jsonl_to_dataset(paths, REJECTED_COLUMNS, folder / 'rejected', folder / 'rejected.parquet')\n"
        "print(sorted(m for m in ('datasets', 'pandas') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
