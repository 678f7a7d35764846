"""Seed readers: every format, and errors that name the file, line and field before any request."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, api_config, run_job, write_config, write_jsonl

from distilforge.core.seeds import SeedError, read_seeds
from distilforge.schemas import SeedFields

ROWS = [{"q": "What is 1+1?", "a": "#### 2"}, {"q": "Is ice cold?", "a": True}, {"q": "Name a color.", "a": "red"}]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "disk"])
def test_formats(tmp_path, fmt):
    rows = [dict(r, a=str(r["a"])) for r in ROWS] if fmt in ("csv", "parquet", "disk") else ROWS
    path = tmp_path / f"seeds.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "csv":
        path.write_text("q,a\n" + "".join(f'"{r["q"]}",{r["a"]}\n' for r in rows))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import datasets

        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    seeds = list(read_seeds(str(path), SeedFields(question="q", answer="a")))
    assert [s.question for s in seeds] == [r["q"] for r in ROWS]
    assert [s.answer_type for s in seeds] == ["number", "yes_no", "text"]
    assert [s.gold for s in seeds] == ["2", "yes", "red"]
    assert [s.seed_id for s in seeds] == ["000000", "000001", "000002"]


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "answer": \n')
    with pytest.raises(SeedError, match=r"s.jsonl:2: invalid JSON"):
        list(read_seeds(str(path), SeedFields()))


def test_missing_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}])
    with pytest.raises(SeedError, match=r"s.jsonl:2: missing field 'question'"):
        list(read_seeds(str(path), SeedFields()))


def test_duplicate_ids_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"id": 1, "question": "a", "answer": "1"}, {"id": 1, "question": "b", "answer": "2"}])
    with pytest.raises(SeedError, match=r"duplicate id '1'"):
        list(read_seeds(str(path), SeedFields(id="id")))


def test_bad_seed_fails_before_any_request_and_writes_nothing(fake, cli, tmp_path):
    seeds = write_jsonl(tmp_path / "s.jsonl", [{"question": "ok", "answer": "#### 1"}] * 3 + [{"question": "", "answer": "1"}])
    config = write_config(tmp_path / "job.yaml", api_config(seeds, fake.base_url))
    result = cli("run", config, "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2
    assert "s.jsonl:4: field 'question' must be a non-empty string" in result.output
    assert fake.requests == []
    assert not (tmp_path / "run" / "dataset").exists()


def test_real_files_read_with_their_gold():
    gsm = list(read_seeds(str(DATA / "gsm8k" / "test.jsonl"), SeedFields(), limit=50))
    assert all(s.answer_type == "number" and s.gold is not None for s in gsm)
    sqa = list(read_seeds(str(DATA / "strategyqa" / "dev.jsonl"), SeedFields(id="qid")))
    assert len(sqa) == 229 and {s.gold for s in sqa} == {"yes", "no"}


SHUFFLED = ("Alice, Bob, and Claire each hold a ball: Alice has a red ball, Bob has a blue ball, and Claire has a "
            "green ball. First, Alice and Bob swap balls. At the end, Alice has the\nOptions:\n(A) red ball\n"
            "(B) blue ball\n(C) green ball")


def test_bare_letter_gold_is_a_choice_when_the_question_lists_options(fake, cli, tmp_path):
    """A multiple-choice set whose gold is a bare letter ('A') is graded as a letter, not as text the article
    rule empties: the run goes through and keeps the teacher's right answers only."""
    seeds = write_jsonl(tmp_path / "s.jsonl", [{"id": "q1", "question": SHUFFLED, "answer": "B"},
                                                 {"id": "q2", "question": SHUFFLED.replace("Alice has the", "Bob has the"),
                                                  "answer": "A"}])
    assert [s.answer_type for s in read_seeds(str(seeds), SeedFields(id="id"))] == ["choice", "choice"]
    from fake_openai import Behaviour
    fake.script = {"Alice has the\n": Behaviour(["Alice now has blue. The answer is (B)."]),
                   "Bob has the\n": Behaviour(["Bob now has red. The answer is B."])}
    data = api_config(seeds, fake.base_url, seeds__fields={"question": "question", "answer": "answer", "id": "id"},
                      generation__samples_per_seed=1)
    summary, kept, _ = run_job(cli, tmp_path, data)
    assert [(r["seed_id"], r["answer"]) for r in kept] == [("q1", "B")]
    assert summary["rejected"] == {"wrong_answer": 1}


def test_a_text_gold_never_normalises_to_nothing(tmp_path):
    from distilforge.core.grading import canonical, grade, infer_answer_type

    # No lettered options: a bare 'A' (or 'the') is text, and stays readable.
    assert infer_answer_type("A", "What is the first letter of the alphabet?") == "text"
    assert infer_answer_type("A", "Which? A) one B) two") == "choice"
    assert infer_answer_type("F", "Which? A) one B) two") == "text"
    assert canonical("A", "text") == "a" and canonical("The", "text") == "the"
    assert canonical("the Nile", "text") == "nile"
    assert grade("a", "a", "text") and not grade("b", "a", "text")
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "First letter of the alphabet?", "answer": "A"}])
    assert [s.gold for s in read_seeds(str(path), SeedFields())] == ["a"]
