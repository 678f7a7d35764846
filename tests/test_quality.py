"""Quality filters, the dataset card and publishing, on real GSM8K / StrategyQA / Alpaca data."""

from __future__ import annotations

import json

import datasets
import pytest
from conftest import DATA, api_config, run_job, write_config, write_jsonl
from fake_openai import Behaviour


def _rows(name, n, start=0):
    lines = (DATA / name).read_text().splitlines()[start : start + n]
    return [json.loads(line) for line in lines]


def _solution(row):
    body, final = row["answer"].rsplit("####", 1)
    return body.replace("<<", " ").replace(">>", " ").strip() + f"\nThe answer is {final.strip()}."


def _config(seeds, base_url):
    data = api_config(seeds, base_url)
    data["teacher"]["params"]["max_tokens"] = 512  # GSM8K solutions run past the fixture's 64
    data["generation"]["samples_per_seed"] = 1
    return data


_run = run_job


def test_minhash_removes_planted_near_duplicates_and_keeps_distinct(fake, cli, tmp_path):
    rows = _rows("gsm8k/train.jsonl", 12)
    # Seeds 8..11 get the rationale of seeds 0..3 with one word changed: near-duplicates across seeds.
    for i in range(12):
        source = rows[i - 8] if i >= 8 else rows[i]
        text = _solution(source)
        if i >= 8:
            text = text.replace(" ", "  ", 1).replace("The answer", "So the answer", 1)
            text = text.rsplit("\n", 1)[0] + f"\nThe answer is {rows[i]['answer'].split('####')[-1].strip()}."
        fake.script[rows[i]["question"][:50]] = Behaviour([text])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows)
    data = _config(seeds, fake.base_url)
    data["filters"] = [{"name": "minhash", "threshold": 0.8}]
    run, kept, out = _run(cli, tmp_path, data)
    assert run["rejected"] == {"minhash": 4} and run["kept"] == 8
    assert sorted(kept["seed_id"]) == [f"{i:06d}" for i in range(8)]  # the first of each pair, in seed order
    rejected = datasets.load_from_disk(str(out / "rejected"))
    assert all("near-duplicate" in d for d in rejected["reject_detail"])


def test_decontamination_removes_planted_eval_questions(fake, cli, tmp_path):
    train, test = _rows("gsm8k/train.jsonl", 6), _rows("gsm8k/test.jsonl", 3)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", train + test)
    for row in train + test:
        fake.script[row["question"][:50]] = Behaviour([_solution(row)])
    data = _config(seeds, fake.base_url)
    evals = [str(DATA / "gsm8k" / "test.jsonl"), str(DATA / "strategyqa" / "dev.jsonl")]
    data["filters"] = [{"name": "decontaminate", "eval_sets": evals, "ngram": 13}]
    run, kept, _ = _run(cli, tmp_path, data)
    assert run["rejected"] == {"decontaminate": 3} and run["kept"] == 6
    report = next(f for f in run["filters"] if f["name"] == "decontaminate")
    assert report["per_eval_set"] == {"test": 3}
    assert not set(kept["question"]) & {r["question"] for r in test}


def test_judge_keeps_and_drops_by_score(fake, cli, tmp_path):
    rows = _rows("gsm8k/train.jsonl", 4)
    for i, row in enumerate(rows):
        fake.script[row["question"][:50]] = Behaviour([_solution(row) + (" GOODMARK" if i % 2 == 0 else " BADMARK")])
    fake.script = {  # verdicts first: the judge prompt quotes the answer, marker included
        "GOODMARK\nThe answer": Behaviour(['{"correctness": 5, "relevance": 5, "clarity": 4, "reason": "sound"}']),
        "BADMARK\nThe answer": Behaviour(['{"correctness": 2, "relevance": 4, "clarity": 3, "reason": "a step is off"}']),
        **fake.script,
    }
    for i, row in enumerate(rows):  # put the marker before the final line so the answer still parses
        body, last = _solution(row).rsplit("\n", 1)
        fake.script[row["question"][:50]] = Behaviour([f"{body} {'GOODMARK' if i % 2 == 0 else 'BADMARK'}\n{last}"])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows)
    data = _config(seeds, fake.base_url)
    judge = {"backend": "openai", "model": "fake-judge", "base_url": fake.base_url, "api_key_env": "DISTILFORGE_TEST_KEY",
             "params": {"temperature": 0.0, "max_tokens": 128}}
    data["filters"] = [{"name": "judge", "teacher": judge, "min_score": 4}]
    run, kept, out = _run(cli, tmp_path, data)
    assert run["kept"] == 2 and run["rejected"] == {"judge": 2}
    assert all(s == pytest.approx(14 / 3, abs=1e-3) for s in kept["judge_score"])
    assert json.loads(kept[0]["judge_scores"])["reason"] == "sound"
    judge_requests = [r for r in fake.requests if r["body"]["model"] == "fake-judge"]
    assert len(judge_requests) == 4 and judge_requests[0]["body"]["response_format"]["type"] == "json_schema"
    # A rerun replays the verdicts from the journal: no judge request is paid twice.
    cli("generate", out)
    assert len([r for r in fake.requests if r["body"]["model"] == "fake-judge"]) == 4


def test_card_lists_every_filter_and_no_secret(fake, cli, tmp_path):
    rows = _rows("gsm8k/train.jsonl", 25)
    for row in rows:
        fake.script[row["question"][:50]] = Behaviour([_solution(row)])
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows)
    data = _config(seeds, fake.base_url)
    data["filters"] = [{"name": "length", "min_words": 5}, {"name": "consistency"},
                       {"name": "decontaminate", "eval_sets": [str(DATA / "gsm8k" / "test.jsonl")]},
                       {"name": "minhash"}]
    data["seeds"]["license"] = "MIT (GSM8K, OpenAI)"
    run, _, out = _run(cli, tmp_path, data)
    card = (out / "dataset" / "README.md").read_text()
    assert card.startswith("---\nlicense:")
    for name in ("truncated", "empty", "refusal", "unparseable", "wrong_answer", "duplicate", "length",
                 "consistency", "decontaminate", "minhash"):
        assert f"| `{name}` |" in card
    assert "MIT (GSM8K, OpenAI)" in card and "fake-teacher" in card and "gsm8k" not in card.split("## Seeds")[0]
    assert "sk-test-secret-123" not in card and "DISTILFORGE_TEST_KEY" not in card
    splits = datasets.load_from_disk(str(out / "dataset"))
    assert len(splits["train"]) + len(splits["validation"]) == run["kept"] and len(splits["validation"]) >= 1


def test_publish_at_the_hub_boundary(fake, cli, tmp_path, monkeypatch):
    import huggingface_hub

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": "Q: 2 + 2?", "answer": "#### 4"}])
    fake.default = Behaviour(["2 + 2 = 4.\nThe answer is 4."])
    data = _config(seeds, fake.base_url)
    out = tmp_path / "run"
    cli("generate", write_config(tmp_path / "job.yaml", data), "--output", out)

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw, self.token))
                        or f"https://huggingface.co/datasets/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit",
                        lambda self, repo_id, **kw: calls.append(("create_commit", repo_id, kw)) or type("C", (), {"oid": "abc"})())
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = cli("publish", out, "--repo", "org/gsm8k-cot", expect=2)
    assert result.exit_code == 2 and "HF_TOKEN" in result.output and calls == []

    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    result = cli("publish", out, "--repo", "org/gsm8k-cot", "--public")
    assert result.exit_code == 0, result.output
    (_, repo, kw, token), (_, repo2, commit) = calls
    assert repo == repo2 == "org/gsm8k-cot" and kw["repo_type"] == "dataset" and kw["private"] is False
    assert token == "hf_secret_token"
    paths = sorted(op.path_in_repo for op in commit["operations"])
    assert paths == ["README.md", "data/train.parquet", "data/validation.parquet"]  # one commit, all files
    assert "hf_secret_token" not in (out / "run.json").read_text()

    def broken(self, repo_id, **kw):
        raise RuntimeError("502 Bad Gateway")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", broken)
    result = cli("publish", out, "--repo", "org/gsm8k-cot", expect=1)
    assert result.exit_code == 1 and "none of data/train.parquet" in result.output  # a failure, not bad input


def test_length_and_consistency_rules():
    from distilforge.quality.simple import ConsistencyFilter, LengthFilter
    from distilforge.schemas import LengthFilterSpec
    from distilforge.schemas.records import Record

    def record(rationale, answer="18"):
        return Record(seed_id="s", sample_index=0, question="How much in total?", gold="18", answer_type="number",
                      prompt=[], teacher_model="t", text="", rationale=rationale, answer=answer)

    length = LengthFilter(LengthFilterSpec(name="length", min_words=6, max_words=30, max_ratio=2))
    assert length.check(record("36 * 0.5 = 18")) is not None
    assert length.check(record("3 dozen is 36 eggs, and 36 * 0.5 = 18")) is not None  # > 2x the question
    assert length.check(record("36 eggs at 0.5 is 18")) is None
    consistency = ConsistencyFilter()
    assert consistency.check(record("36 * 0.5 = 18 dollars")) is None
    assert "ends at 20" in consistency.check(record("36 * 0.5 = 20"))


def test_decontamination_ignores_a_templated_eval_sets_template_but_catches_copies(fake, cli, tmp_path):
    """BIG-Bench's tracking-shuffled-objects questions share a 15-word template. Against a set of them, every
    training question of the same task shared a 13-gram and was dropped; now the template (n-grams in 3 or
    more eval questions) is not matched, and only the planted copy of an eval question is caught."""
    import random

    rng = random.Random(0)
    names, colours = ["Alice", "Bob", "Claire", "Dave", "Eve", "Fred", "Gertrude"], \
        ["red", "blue", "green", "pink", "white", "black", "purple", "orange"]

    def question() -> dict:
        a, b, c = rng.sample(names, 3)
        x, y, z = rng.sample(colours, 3)
        first, second = rng.sample([a, b, c], 2)
        text = (f"{a}, {b}, and {c} are playing a game. At the start of the game, they are each holding a ball: "
                f"{a} has a {x} ball, {b} has a {y} ball, {c} has a {z} ball. As the game progresses, pairs of "
                f"players trade balls. First, {first} and {second} swap balls. At the end of the game, {a} has the")
        return {"question": text, "answer": "#### 1"}

    evals = [question() for _ in range(12)]
    train = [question() for _ in range(5)] + [evals[3]]  # the last one is a copy of an eval question
    assert len({r["question"] for r in train + evals}) == 17
    for row in train:
        fake.script[row["question"]] = Behaviour([f"{row['question'][:20]} ... so the answer is 1.\nThe answer is 1."])
    data = _config(write_jsonl(tmp_path / "seeds.jsonl", train), fake.base_url)
    data["filters"] = [{"name": "decontaminate", "eval_sets": [str(write_jsonl(tmp_path / "bbh.jsonl", evals))]}]
    run, kept, _ = _run(cli, tmp_path, data)
    assert run["rejected"] == {"decontaminate": 1} and run["kept"] == 5
    assert evals[3]["question"] not in set(kept["question"])
