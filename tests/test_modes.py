"""Each generation mode through the CLI against the fake server, on real seed data (tests/data/)."""

from __future__ import annotations

import json
from itertools import combinations

import datasets
import pytest
from conftest import DATA, api_config, run_job, write_jsonl
from fake_openai import Behaviour

from distilforge.modes.rouge import rouge_l, tokenize
from distilforge.teachers.structured import parse_model


def _rows(name, n):
    with open(DATA / name) as fh:
        return [json.loads(line) for _, line in zip(range(n), fh, strict=False)]


_run = run_job


def test_self_consistency_keeps_the_majority(fake, cli, tmp_path):
    rows = _rows("strategyqa/dev.jsonl", 4)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": r["question"]} for r in rows])
    fake.default = Behaviour(["It is so.\nThe answer is yes.", "Indeed.\nThe answer is yes.", "No way.\nThe answer is no."])
    data = api_config(seeds, fake.base_url)
    data["seeds"]["fields"] = {"question": "question", "answer": None}
    data["generation"].update(samples_per_seed=3, self_consistency=True, answer_type="yes_no")
    run, kept, _ = _run(cli, tmp_path, data)
    assert run["kept"] == 8 and run["rejected"] == {"minority": 4}
    assert set(kept["answer"]) == {"yes"} and all(v == pytest.approx(0.6667) for v in kept["vote_share"])
    assert set(kept["mode"]) == {"cot"} and kept[0]["template"] == "cot.jinja" and len(kept[0]["template_sha"]) == 16


def test_adaptive_sampling_saves_requests_at_the_same_kept_count(fake, cli, tmp_path):
    rows = _rows("gsm8k/test.jsonl", 5)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows)
    fake.script = {r["question"][:40]: Behaviour([f"Worked out.\nThe answer is {r['answer'].split('####')[-1].strip()}."])
                   for r in rows}
    data = api_config(seeds, fake.base_url)
    data["teacher"]["supports_n"] = False
    data["teacher"]["cache"] = False  # the second run asks again: requests are what is compared
    data["generation"].update(samples_per_seed=4, keep="one")
    (tmp_path / "fixed").mkdir()
    (tmp_path / "adaptive").mkdir()
    fixed, _, _ = _run(cli, tmp_path / "fixed", data)
    sent_fixed = len(fake.requests)
    data["generation"]["adaptive"] = {"agree": 2, "batch": 1}
    adaptive, _, _ = _run(cli, tmp_path / "adaptive", data)
    sent_adaptive = len(fake.requests) - sent_fixed
    assert fixed["kept"] == adaptive["kept"] == 5
    assert sent_adaptive == 5 < sent_fixed == 20
    assert adaptive["requests_saved"] == 15 and fixed["requests_saved"] == 0


def test_adaptive_without_gold_stops_when_answers_agree(fake, cli, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": f"Q{i}: is it so?"} for i in range(3)])
    fake.default = Behaviour(["Yes.\nThe answer is yes."])
    data = api_config(seeds, fake.base_url)
    data["seeds"]["fields"] = {"question": "question", "answer": None}
    data["teacher"]["supports_n"] = False
    data["generation"].update(samples_per_seed=8, self_consistency=True, answer_type="yes_no",
                              adaptive={"agree": 3, "batch": 1})
    run, _kept, _ = _run(cli, tmp_path, data)
    assert len(fake.requests) == 9 and run["requests_saved"] == 15
    assert run["kept"] == 3 and run["rejected"] == {"duplicate": 6}


def test_keep_distinct_caps_per_seed(fake, cli, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"question": "Q: 2 + 2?", "answer": "#### 4"}])
    fake.default = Behaviour([f"Way {i}: 2 + 2 = 4.\nThe answer is 4." for i in range(5)])
    data = api_config(seeds, fake.base_url)
    data["generation"].update(samples_per_seed=5, keep="distinct", max_per_seed=2)
    run, _kept, _ = _run(cli, tmp_path, data)
    assert run["kept"] == 2 and run["rejected"] == {"keep_policy": 3}


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["random", "nearest"])
def test_icl_never_shows_a_query_its_own_answer(fake, cli, tmp_path, selection):
    rows = [dict(r, id=f"g{i}") for i, r in enumerate(_rows("gsm8k/train.jsonl", 30))]
    seeds = write_jsonl(tmp_path / "seeds.jsonl", rows[:6])
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)  # the pool contains the queries themselves
    fake.default = Behaviour(["Step by step.\nThe answer is 1."])
    data = api_config(seeds, fake.base_url)
    data["seeds"]["fields"]["id"] = "id"
    data["generation"].update(mode="icl", samples_per_seed=1,
                              icl={"pool": str(pool), "k": 3, "selection": selection, "fields": {"id": "id"}})
    _, _, out = _run(cli, tmp_path, data)
    rejected = datasets.load_from_disk(str(out / "rejected"))
    assert len(rejected) == 6
    by_id = {r["id"]: r for r in rows}
    for row in rejected:
        assert len(row["demo_ids"]) == 3 and row["seed_id"] not in row["demo_ids"]
        prompt = next(r["body"]["messages"][-1]["content"] for r in fake.requests
                      if r["body"]["messages"][-1]["content"].rstrip().endswith(by_id[row["seed_id"]]["question"] + "\nAnswer:"))
        assert prompt.count(by_id[row["seed_id"]]["question"]) == 1  # the query, once, last
        for demo in row["demo_ids"]:
            assert by_id[demo]["question"] in prompt
        assert row["messages"][0]["content"].startswith(by_id[row["seed_id"]]["question"])  # zero-shot student


def test_instruct_on_alpaca(fake, cli, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", _rows("alpaca/alpaca_first6.jsonl", 6))
    fake.default = Behaviour(["Here is a careful, complete answer to the task."])
    data = api_config(seeds, fake.base_url)
    data["seeds"]["fields"] = {"question": "instruction", "input": "input", "answer": None}
    data["generation"].update(mode="instruct", samples_per_seed=1)
    run, kept, _ = _run(cli, tmp_path, data)
    assert run["kept"] == 6
    for row in kept:
        assert row["mode"] == "instruct" and row["output"] == "Here is a careful, complete answer to the task."
        user = row["messages"][0]["content"]
        assert user.startswith(row["instruction"]) and (row["input"] is None or user.endswith(row["input"]))


PROPOSALS = [
    '{"instruction": "Summarize the story of a famous novel in two sentences.", "input": "Pride and Prejudice", "output": "A witty woman and a proud man misjudge each other. They overcome pride and prejudice and marry."}',
    '```json\n{"instruction": "Convert the temperature from Celsius to Fahrenheit.", "input": "25", "output": "77",}\n```',
    '{"instruction": "Is there anything I can eat for a breakfast that does not include eggs, yet includes protein?", "input": "", "output": "Oatmeal with nuts."}',
    '{"instruction": "Draw a picture of a cat sitting on a mat.", "input": "", "output": "..."}',
    'I would suggest a task about cooking.',
    '{"instruction": "List three benefits of regular exercise for older adults.", "input": "<noinput>", "output": "Better balance, stronger bones, improved mood."}',
    '{"instruction": "Suggest a name for a bakery that sells vegan pastries.", "input": "", "output": "Crumb & Leaf"}',
    '{"instruction": "List three benefits of regular exercise for older people.", "input": "", "output": "Balance, bones, mood."}',
]


def test_self_instruct_grows_a_novel_pool(fake, cli, tmp_path):
    fake.default = Behaviour(PROPOSALS)
    fake.script = {"That is not a valid task": Behaviour([  # the repair request for the broken reply
        '{"instruction": "Plan a three-course vegetarian dinner menu.", "input": "", "output": "Soup, risotto, tart."}'])}
    data = api_config(DATA / "self_instruct" / "seed_tasks.jsonl", fake.base_url)
    data["seeds"]["fields"] = {"question": "instruction", "answer": None}
    data["generation"].update(mode="self-instruct", target_count=4, proposals_per_round=8)
    run, kept, _out = _run(cli, tmp_path, data)
    assert run["kept"] == 4
    assert set(kept["instruction"]) <= {
        "Summarize the story of a famous novel in two sentences.", "Convert the temperature from Celsius to Fahrenheit.",
        "List three benefits of regular exercise for older adults.", "Suggest a name for a bakery that sells vegan pastries.",
        "Plan a three-course vegetarian dinner menu."}
    repairs = [r for r in fake.requests if "That is not a valid task" in r["body"]["messages"][-1]["content"]]
    assert len(repairs) == 1 and repairs[0]["body"]["messages"][-2]["role"] == "assistant"
    # Responses reach proposals in arrival order, so some may come after the target is met.
    assert run["rejected"]["heuristics"] == 1 and run["rejected"]["invalid_json"] == 1
    assert run["rejected"]["rouge_l"] >= 1 and sum(run["rejected"].values()) == 5  # 8 proposals + 1 repair
    seeds = [json.loads(line)["instruction"]
             for line in (DATA / "self_instruct" / "seed_tasks.jsonl").read_text().splitlines()]
    for a, b in combinations(list(kept["instruction"]), 2):
        assert rouge_l(tokenize(a), tokenize(b)) < 0.7
    for a in kept["instruction"]:
        assert max(rouge_l(tokenize(a), tokenize(s)) for s in seeds) < 0.7
    assert all(r["rouge_l_max"] is not None and r["rouge_l_max"] < 0.7 for r in kept)
    assert fake.requests[0]["body"]["response_format"]["type"] == "json_schema"


def test_evol_instruct_rounds_and_eliminations(fake, cli, tmp_path):
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [dict(r, id=f"a{i}") for i, r in
                                                    enumerate(_rows("alpaca/alpaca_first6.jsonl", 4))])
    night = "Give three tips for staying healthy while working night shifts, citing one study per tip."
    fake.script = {  # first matching key wins: evolution prompts quote the parent after "#Given Prompt#:"
        "#Given Prompt#:\nGive three tips for staying healthy while": Behaviour([night]),  # round 2: unchanged
        "#Given Prompt#:\nGive three tips for staying healthy.": Behaviour([night]),
        "#Given Prompt#:\nWhat are the three primary colors?": Behaviour(["#Rewritten Prompt#: name the colors"]),
        "#Given Prompt#:\nDescribe the structure of an atom.": Behaviour(["Describe an atom as if to a child, in one line."]),
        "#Given Prompt#:\nHow can we reduce air pollution?": Behaviour(["How can a mid-size city cut NO2 by 20% in five years?"]),
        "#Given Prompt#:\nHow can a mid-size city": Behaviour(["How can a mid-size port city cut NO2 and PM2.5 by 20% in five years on a fixed budget?"]),
        "Describe an atom as if": Behaviour(["Sorry, I cannot do that."]),
    }
    fake.default = Behaviour(["A full answer with details and reasons for each part of the task."])
    data = api_config(seeds, fake.base_url)
    data["seeds"]["fields"] = {"question": "instruction", "input": "input", "answer": None, "id": "id"}
    data["generation"].update(mode="evol-instruct", rounds=2)
    run, kept, out = _run(cli, tmp_path, data)
    assert sorted(zip(kept["seed_id"], kept["parent_id"], strict=True)) == [("a0~1", "a0"), ("a3~1", "a3"), ("a3~1~2", "a3~1")]
    assert run["rejected"] == {"evolution_failed": 3}
    rejected = {r["seed_id"]: r["reject_detail"] for r in datasets.load_from_disk(str(out / "rejected"))}
    assert "copies words" in rejected["a1~1"] and "apology" in rejected["a2~1"]
    assert "equal to its parent" in rejected["a0~1~2"]
    for row in kept:
        assert row["mode"] == "evol-instruct" and row["output"].startswith("A full answer")
        assert row["messages"][0]["content"] == row["instruction"]


def test_structured_output_repair():
    from distilforge.schemas.teacher_answers import Task

    task, error = parse_model('Sure! ```json\n{"instruction": "Do X.", "output": "Y",}\n```', Task)
    assert task is not None and task.instruction == "Do X." and error is None
    task, error = parse_model('{"instruction": ""}', Task)
    assert task is None and "instruction" in error
