"""What a newcomer hit on a first pass through the product: errors that say what to do, and bad seed lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import api_config, write_config, write_jsonl
from fake_openai import Behaviour

GOOD = [{"question": f"Q{i}: {i} + 1?", "answer": f"#### {i + 1}"} for i in range(4)]


def _script(fake):
    fake.script = {f"Q{i}:": Behaviour([f"{i} + 1 = {i + 1}.\nThe answer is {i + 1}."]) for i in range(4)}


def test_set_mistakes_are_blamed_on_set_with_the_closest_key(cli, tmp_path):
    seeds = write_jsonl(tmp_path / "s.jsonl", GOOD)
    config = write_config(tmp_path / "job.yaml", api_config(seeds, "http://127.0.0.1:9/v1"))
    result = cli("estimate", config, "--set", "teacher.params.temprature=0.2", expect=2)
    assert result.exit_code == 2
    assert "--set teacher.params.temprature=0.2: teacher.params.temprature: unknown key (did you mean " \
           "'temperature'?)" in result.output
    assert "job.yaml:" not in result.output
    result = cli("estimate", config, "--set", "generation.samples_per_seed=-1", expect=2)
    assert result.exit_code == 2 and "--set generation.samples_per_seed=-1: generation.samples_per_seed" in result.output
    (tmp_path / "typo.yaml").write_text((tmp_path / "job.yaml").read_text().replace("max_tokens", "max_token"))
    result = cli("estimate", tmp_path / "typo.yaml", expect=2)
    assert result.exit_code == 2 and "unknown key (did you mean 'max_tokens'?)" in result.output


def test_a_missing_field_lists_the_columns(cli, tmp_path):
    seeds = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "1 + 1?", "answer": "2"}])
    config = write_config(tmp_path / "job.yaml", api_config(seeds, "http://127.0.0.1:9/v1"))
    result = cli("estimate", config, expect=2)
    assert result.exit_code == 2
    assert "s.jsonl:1: missing field 'question' (seeds.fields.question); the columns are 'prompt', 'answer'" \
        in result.output


def test_csv_delimiter_header_spaces_and_an_unclosed_quote(cli, tmp_path):
    (tmp_path / "s.csv").write_text("question ; answer \nWhat is 1 + 1?;2\n\"What is\n2 + 2?\";4\n")
    config = write_config(tmp_path / "job.yaml", api_config(tmp_path / "s.csv", "http://127.0.0.1:9/v1"))
    result = cli("estimate", config, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["seeds"] == 2
    (tmp_path / "s.csv").write_text("question,answer\nWhat is 1 + 1?,2\n\"What is 2 + 2?,4\nWhat is 3 + 3?,6\n")
    result = cli("estimate", config, expect=2)
    assert result.exit_code == 2 and "s.csv:3: unexpected end of data (a quote opened on this line" in result.output


@pytest.mark.parametrize("command", ["train", "eval", "report", "improve"])
def test_commands_on_a_missing_run_folder_say_so(cli, tmp_path, command):
    result = cli(command, tmp_path / "nope", expect=2)
    assert result.exit_code == 2
    assert "nope: no such run folder" in result.output and "config file" not in result.output


def test_version_and_help_without_types(cli):
    from distilforge import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"distilforge {__version__}"
    result = cli("--help")
    assert result.exit_code == 0 and "--help" in result.output and "<bool>" not in result.output
    result = cli("export", "--help")
    assert result.exit_code == 0 and "RUN_DIR" in result.output and "{run_dir}" not in result.output


def test_intervals_at_zero_and_hundred_percent_are_wilson():
    from distilforge.evaluation.accuracy import bootstrap_interval, wilson_interval

    low, high = bootstrap_interval([False] * 20)
    assert low == 0.0 and 0.15 < high < 0.17  # Wilson: [0, 16.1%] for 0/20
    low, high = bootstrap_interval([True] * 20)
    assert 0.83 < low < 0.85 and high == 1.0
    assert wilson_interval(0, 0) == (0.0, 0.0)


def test_bad_seed_lines_stop_by_default_with_the_right_column(fake, cli, tmp_path):
    lines = [json.dumps(GOOD[0]), '{"question": "Q1: 1 + 1?", "answer": }', json.dumps({"answer": "3"}),
             *[json.dumps(r) for r in GOOD[2:]]]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    data = api_config(tmp_path / "s.jsonl", fake.base_url)
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2
    assert "s.jsonl:2: invalid JSON (Expecting value at column 38)" in result.output
    assert lines[1][37] == "}" and not (tmp_path / "run").exists() and not fake.bills


def test_bad_seed_lines_skipped_are_listed_and_counted(fake, cli, tmp_path):
    _script(fake)
    lines = [json.dumps(GOOD[0]), '{"question": "Q1: 1 + 1?", "answer": }', json.dumps({"answer": "3"}),
             *[json.dumps(r) for r in GOOD[2:]]]
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    data = api_config(tmp_path / "s.jsonl", fake.base_url, seeds__on_bad_line="skip",
                      generation__samples_per_seed=1)
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["rejected_seeds"] == 2 and run["seeds"]["count"] == 3 and run["kept"] == 3
    rejected = [json.loads(line) for line in (out / "rejected_seeds.jsonl").read_text().splitlines()]
    assert [r["where"].rsplit(":", 1)[1] for r in rejected] == ["2", "3"]
    assert rejected[0]["reason"] == "invalid JSON (Expecting value at column 38)"
    assert rejected[1]["reason"].startswith("missing field 'question'")
    assert "seed lines skipped" in result.output
    assert "stopped" not in result.output  # nothing stopped this run


@pytest.mark.parametrize("example", sorted(p.name for p in (__import__("conftest").REPO / "examples").glob("*.yaml")))
def test_examples_work_when_copied_out_of_the_repo(cli, tmp_path, monkeypatch, example):
    from conftest import REPO

    copy = tmp_path / example
    copy.write_text((REPO / "examples" / example).read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    result = cli("estimate", copy, "--json", expect=None)  # reads and checks the seed file the config names
    if "grows its own prompts" in result.output:  # self-/evol-instruct: no estimate, but the files are there
        assert result.exit_code == 2 and "cannot be estimated in advance" in result.output
    else:
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["seeds"] > 0
    from distilforge.schemas import load_config

    config = load_config(copy)
    named = [config.seeds.path, *(f.path for f in config.eval.files), config.generation.icl.pool]
    assert all(Path(p).is_file() for p in named if p)


def test_an_unknown_packaged_file_is_named(cli, tmp_path):
    data = api_config("distilforge://demo/nope.jsonl", "http://127.0.0.1:9/v1")
    result = cli("estimate", write_config(tmp_path / "job.yaml", data), expect=2)
    assert result.exit_code == 2
    assert "distilforge://demo/nope.jsonl: no such packaged file (known: distilforge://demo/eval_gsm8k.jsonl" \
        in result.output


def test_the_eval_prompt_follows_the_students_format(tmp_path):
    from distilforge.evaluation.accuracy import eval_prompt
    from distilforge.schemas import JobConfig
    from distilforge.schemas.records import Seed

    seed = Seed(seed_id="1", question="What is 2 + 3?", gold="5", answer_type="number", source="x",
                context=[{"role": "system", "content": "Be brief."}])
    config = JobConfig.model_validate({"seeds": {"path": "x.jsonl"}, "generation": {"system_prompt": "Teacher only."}})
    assert config.generation.student_prompt == "question"  # the stated default
    assert eval_prompt(config, seed) == [*seed.context, {"role": "user", "content": "What is 2 + 3?"}]
    templated = config.model_copy(update={"generation": config.generation.model_copy(
        update={"student_prompt": "template"})})
    asked = eval_prompt(templated, seed)
    assert asked[0] == seed.context[0] and asked[-1]["content"].startswith("What is 2 + 3?\n\nThink step by step")
    teacher = eval_prompt(config, seed, student=False)  # the teacher keeps its chain-of-thought prompt
    assert "Think step by step" in teacher[-1]["content"]
