"""OpenAI chat format in and out: seeds from chat JSONL, `distilforge export --format openai-chat`, and the
round trip seeds -> fake teacher -> dataset -> export -> seeds again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

from distilforge.core.seeds import SeedError, read_seeds
from distilforge.modes import make_prompter
from distilforge.publish.export import check_messages
from distilforge.schemas import GenerationConfig, SeedFields

SYSTEM = {"role": "system", "content": "You are a careful maths tutor."}


def chat_seeds(n: int = 12) -> list[dict]:
    """n seeds in four shapes: with a system turn, multi-turn, content parts, and bare with metadata."""
    rows = []
    for i in range(n):
        question, reference = f"Q-{i:02d}: what is {i} + 1?", f"{i} plus one is {i + 1}.\nThe answer is {i + 1}."
        shape = i % 4
        if shape == 0:
            messages = [SYSTEM, {"role": "user", "content": question}, {"role": "assistant", "content": reference}]
        elif shape == 1:
            messages = [SYSTEM, {"role": "user", "content": "Can you help with sums?"},
                        {"role": "assistant", "content": "Yes, ask away."},
                        {"role": "user", "content": question}, {"role": "assistant", "content": reference}]
        elif shape == 2:
            messages = [{"role": "user", "content": [{"type": "text", "text": f"Q-{i:02d}:"},
                                                     {"type": "text", "text": f"what is {i} + 1?"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": reference}]}]
        else:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reference}]
        rows.append({"messages": messages, "metadata": {"id": f"s{i:02d}", "source": "test"}})
    return rows


def script(n: int = 12) -> dict[str, Behaviour]:
    return {f"Q-{i:02d}": Behaviour([f"Adding one to {i} gives {i + 1}.\nThe answer is {i + 1}.",
                                     f"{i} and one more make {i + 1}.\nThe answer is {i + 1}."]) for i in range(n)}


# -- seeds in ----------------------------------------------------------------------------------------


def test_openai_chat_seeds_keep_question_reference_context_and_metadata(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", chat_seeds(4))
    seeds = list(read_seeds(str(path), SeedFields(), format="openai-chat"))
    assert [s.seed_id for s in seeds] == ["s00", "s01", "s02", "s03"]
    assert [s.question for s in seeds] == ["Q-00: what is 0 + 1?", "Q-01: what is 1 + 1?", "Q-02:\nwhat is 2 + 1?",
                                           "Q-03: what is 3 + 1?"]
    assert [s.gold for s in seeds] == ["1", "2", "3", "4"] and {s.answer_type for s in seeds} == {"number"}
    assert seeds[0].context == [SYSTEM]
    assert seeds[1].context == [SYSTEM, {"role": "user", "content": "Can you help with sums?"},
                                {"role": "assistant", "content": "Yes, ask away."}]
    assert seeds[2].context is None and seeds[3].context is None
    assert seeds[0].meta["raw_answer"] == "0 plus one is 1.\nThe answer is 1."
    assert seeds[0].meta["metadata"] == {"id": "s00", "source": "test"}
    assert seeds[0].source == f"{path}:1"
    # auto (the default) reads the same file the same way; fields.answer: null ignores the references
    assert [s.question for s in read_seeds(str(path), SeedFields())] == [s.question for s in seeds]
    no_gold = list(read_seeds(str(path), SeedFields(answer=None), format="openai-chat"))
    assert {s.gold for s in no_gold} == {None} and no_gold[0].meta["reference"].startswith("0 plus one")


TOOL_ROW = {"messages": [{"role": "user", "content": "Weather in Paris? Answer yes or no: is it raining?"},
                         {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                         {"role": "tool", "content": "rain", "tool_call_id": "c1"},
                         {"role": "assistant", "content": "Yes"}]}


def test_openai_chat_seeds_without_reference_and_positional_ids(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France?"}]},
            {"messages": [{"role": "user", "content": "Is it raining?"}, {"role": "assistant", "content": "Yes"}]}]
    seeds = list(read_seeds(str(write_jsonl(tmp_path / "c.jsonl", rows)), SeedFields(), format="openai-chat"))
    assert [s.seed_id for s in seeds] == ["000000", "000001"]
    assert seeds[0].gold is None and seeds[0].answer_type == "text"
    assert seeds[1].gold == "yes" and seeds[1].context is None


def test_openai_migration_shapes_developer_name_weight_stored_completions(tmp_path):
    rows = [
        {"messages": [{"role": "developer", "content": "Answer briefly."},
                      {"role": "user", "name": "ann", "content": "Is a whale a mammal?"},
                      {"role": "assistant", "content": "Yes", "weight": 1},
                      {"role": "assistant", "content": "No", "weight": 0}],
         "metadata": {"id": "w"}},
        {"request": {"model": "gpt-4o", "messages": [{"role": "system", "content": "Be exact."},
                                                     {"role": "user", "content": "Is fire cold?"}]},
         "response": {"choices": [{"index": 0, "message": {"role": "assistant", "content": "No"}}]},
         "metadata": {"id": "f"}},
    ]
    seeds = list(read_seeds(str(write_jsonl(tmp_path / "c.jsonl", rows)), SeedFields()))  # auto detects both
    assert [(s.seed_id, s.question, s.gold) for s in seeds] == [("w", "Is a whale a mammal?", "yes"),
                                                                ("f", "Is fire cold?", "no")]
    assert seeds[0].context == [{"role": "system", "content": "Answer briefly."}]  # developer is read as system
    assert seeds[1].context == [{"role": "system", "content": "Be exact."}]


@pytest.mark.parametrize(("row", "error"), [
    ({"messages": [SYSTEM, {"role": "assistant", "content": "hi"}]}, r"c.jsonl:2: no user turn"),
    ({"messages": [{"role": "critic", "content": "x"}, {"role": "user", "content": "q"}]},
     r"c.jsonl:2: messages\[0\]: role 'critic' is not one of system, developer, user, assistant"),
    (TOOL_ROW, r"c.jsonl:2: messages\[1\]: a tool turn; tool use is not distilled"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]},
     r"c.jsonl:2: messages\[1\].weight: expected 0 or 1, got 2"),
    ({"messages": [{"role": "user", "content": 42}]}, r"c.jsonl:2: messages\[0\].content: expected a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     r"c.jsonl:2: messages\[0\].content\[0\]: a 'image_url' part; only text parts are read"),
    ({"messages": [{"role": "user", "content": "  "}]}, r"c.jsonl:2: messages\[0\]: empty user content"),
    ({"messages": []}, r"c.jsonl:2: 'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "q"}], "metadata": "x"}, r"c.jsonl:2: 'metadata' must be an object"),
    ({"messages": [{"role": "user", "content": "q"}], "metadata": {"id": "a"}},
     r"c.jsonl:2: duplicate seed id 'a' with another question"),
])
def test_openai_chat_errors_name_the_line(tmp_path, row, error):
    first = {"messages": [{"role": "user", "content": "fine"}], "metadata": {"id": "a"}}
    path = write_jsonl(tmp_path / "c.jsonl", [first, row])
    with pytest.raises(SeedError, match=error):
        list(read_seeds(str(path), SeedFields(), format="openai-chat"))


def test_prompts_keep_system_turns_first_and_wrap_the_question(tmp_path):
    seeds = list(read_seeds(str(write_jsonl(tmp_path / "chat.jsonl", chat_seeds(4))), SeedFields()))
    prompter = make_prompter(GenerationConfig(system_prompt="Default system prompt."))
    teacher, fields = prompter.build(seeds[1])
    assert teacher[:3] == seeds[1].context  # the seed's own system turn wins over generation.system_prompt
    assert teacher[-1]["role"] == "user" and teacher[-1]["content"].startswith("Q-01: what is 1 + 1?\n\nThink step")
    # the student keeps the system turn and the earlier turns, and is asked the bare question (the default)
    assert fields["student_prompt"] == [*teacher[:-1], {"role": "user", "content": "Q-01: what is 1 + 1?"}]
    templated = make_prompter(GenerationConfig(system_prompt="Default system prompt.", student_prompt="template"))
    assert templated.build(seeds[1])[1]["student_prompt"] == teacher
    teacher, fields = prompter.build(seeds[3])  # no system turn: the configured one, for the teacher only
    assert teacher[0] == {"role": "system", "content": "Default system prompt."}
    assert fields["student_prompt"] == [{"role": "user", "content": "Q-03: what is 3 + 1?"}] and len(teacher) == 2
    teacher, fields = templated.build(seeds[3])
    assert "student_prompt" not in fields


# -- out, and the round trip ----------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("template", ["cot", "bare"])
def test_round_trip_seeds_run_export_seeds(fake, cli, tmp_path, template):
    fake.script = script()
    originals = chat_seeds()
    seeds_path = write_jsonl(tmp_path / "chat.jsonl", originals)
    config = api_config(seeds_path, fake.base_url, seeds__format="openai-chat", seeds__fields={},
                        output__validation_fraction=0.25)
    if template == "bare":  # the student is asked the bare question: the round trip gives back the originals
        (tmp_path / "bare.jinja").write_text("{{ question }}\n")
        config["generation"]["template"] = str(tmp_path / "bare.jinja")
    run_dir = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", config), "--output", run_dir)
    assert result.exit_code == 0, result.output
    kept = load_kept(run_dir)
    assert len(kept) == 24

    result = cli("export", run_dir, "--format", "openai-chat")
    assert result.exit_code == 0, result.output
    out = run_dir / "export" / "openai-chat"
    import datasets

    splits = datasets.load_from_disk(str(run_dir / "dataset"))
    n_train, n_val = len(splits["train"]), len(splits["validation"])  # split by seed: every sample on one side
    assert n_train + n_val == 24 and n_val and not set(splits["train"]["seed_id"]) & set(splits["validation"]["seed_id"])
    assert f"wrote train.jsonl {n_train}, validation.jsonl {n_val} lines" in result.output
    exported = {}
    for split in ("train", "validation"):
        lines = _read_jsonl(out / f"{split}.jsonl")
        # exactly the conversations the student is trained on, in order, and valid fine-tuning lines
        assert lines == [{"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                          "metadata": {"id": row["seed_id"]}} for row in splits[split]]
        assert all(check_messages(line["messages"]) is None for line in lines)
        exported[split] = lines

    by_id = {row["metadata"]["id"]: row["messages"] for row in originals}
    for split in ("train", "validation"):
        for line, row in zip(exported[split], splits[split], strict=True):
            original = by_id[row["seed_id"]]
            # system turns and earlier turns of the seed come through unchanged, before the question
            context = [m for m in original[:-2]]
            assert line["messages"][:-2] == context
            assert line["messages"][-1] == {"role": "assistant", "content": row["text"].strip()}

    # re-importing the export gives the same seeds: ids (metadata.id), questions (the student is asked the
    # bare question by default), context, and the kept answers as references; a seed's later lines are
    # its other kept samples, read once
    first = {s.seed_id: s for s in read_seeds(str(seeds_path), SeedFields())}
    again = [s for split in ("train", "validation")
             for s in read_seeds(str(out / f"{split}.jsonl"), SeedFields(), format="openai-chat")]
    assert {s.seed_id for s in again} == set(first)
    for seed in again:
        original = first[seed.seed_id]
        assert (seed.question, seed.context, seed.gold) == (original.question, original.context, original.gold)


def _dataset(run_dir: Path, train: list[list[dict]], validation: list[list[dict]]) -> None:
    import datasets

    def split(rows: list[list[dict]]) -> datasets.Dataset:
        return datasets.Dataset.from_list([{"seed_id": f"{i:03d}", "messages": m} for i, m in enumerate(rows)])

    datasets.DatasetDict({"train": split(train), "validation": split(validation)}).save_to_disk(
        str(run_dir / "dataset"))


def ok(i: int) -> list[dict]:
    return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]


def test_export_skips_and_names_invalid_rows(cli, tmp_path):
    run_dir = tmp_path / "run"
    bad = [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "x"}],
        [{"role": "assistant", "content": "x"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "q" * 400}, {"role": "assistant", "content": "a"}],
    ]
    _dataset(run_dir, [ok(0), *bad, ok(1)], [ok(2)])
    result = cli("export", run_dir, "--max-tokens", "50", "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "skipped train row 1 (seed 001): messages[1]: empty assistant content" in result.output
    assert "skipped train row 2 (seed 002): messages[1]: role 'tool' is not one of system, user, assistant" in result.output
    assert "skipped train row 3 (seed 003): messages[1]: the last turn is user, not assistant" in result.output
    assert "skipped train row 4 (seed 004): about 107 tokens, over the limit of 50 (--max-tokens)" in result.output
    assert "4 invalid rows skipped" in result.output
    assert _read_jsonl(tmp_path / "out" / "train.jsonl") == [{"messages": ok(0), "metadata": {"id": "000"}},
                                                             {"messages": ok(1), "metadata": {"id": "005"}}]
    assert _read_jsonl(tmp_path / "out" / "validation.jsonl") == [{"messages": ok(2), "metadata": {"id": "000"}}]
    assert "warning: train.jsonl has 2 examples; OpenAI fine-tuning needs at least 10" in result.output
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary file left

    # an export where no validation row is valid removes the old validation file rather than mixing exports
    _dataset(tmp_path / "run2", [ok(3)], [bad[0]])
    result = cli("export", tmp_path / "run2", "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.jsonl"]


def test_export_exit_codes(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("export", run_dir, expect=2)
    assert result.exit_code == 2 and "no dataset to export" in result.output
    _dataset(run_dir, [[{"role": "user", "content": "q"}]], [[{"role": "system", "content": "s"}]])
    result = cli("export", run_dir, "--format", "alpaca", expect=2)
    assert result.exit_code == 2 and "unknown export format" in result.output
    result = cli("export", run_dir, expect=1)
    assert result.exit_code == 1
    assert "no row to export (2 invalid); nothing written" in result.output
    assert not (run_dir / "export" / "openai-chat" / "train.jsonl").exists()


def test_check_messages_rules():
    assert check_messages(ok(0)) is None
    assert check_messages([SYSTEM, *ok(0)]) is None
    assert check_messages([{"role": "user", "content": "q", "name": "bob"}, ok(0)[1]]) == "messages[0]: unknown key 'name'"
    assert check_messages([{"role": "user", "content": "q", "name": None}, ok(0)[1]]) is None  # Arrow's absent key
    assert check_messages([SYSTEM, {"role": "assistant", "content": "a"}]) == "messages: no user turn"
    assert check_messages([]) == "messages: expected a non-empty list"
