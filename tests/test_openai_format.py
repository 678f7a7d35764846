"""OpenAI chat format in and out: seeds from chat JSONL, `distilforge export --format openai-chat`, and the
round trip seeds -> fake teacher -> dataset -> export -> seeds again."""

from __future__ import annotations

import pytest
from conftest import write_jsonl
from fake_openai import Behaviour

from distilforge.core.config import GenerationConfig, SeedFields
from distilforge.core.seeds import SeedError, read_seeds
from distilforge.modes import make_prompter

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


def test_openai_chat_seeds_without_reference_tools_and_positional_ids(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {"messages": [{"role": "user", "content": "Weather in Paris? Answer yes or no: is it raining?"},
                      {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                      {"role": "tool", "content": "rain", "tool_call_id": "c1"},
                      {"role": "assistant", "content": "Yes"}]},
    ]
    seeds = list(read_seeds(str(write_jsonl(tmp_path / "c.jsonl", rows)), SeedFields(), format="openai-chat"))
    assert [s.seed_id for s in seeds] == ["000000", "000001"]
    assert seeds[0].gold is None and seeds[0].answer_type == "text"
    assert seeds[1].gold == "yes" and seeds[1].context is None


@pytest.mark.parametrize(("row", "error"), [
    ({"messages": [SYSTEM, {"role": "assistant", "content": "hi"}]}, r"c.jsonl:2: no user turn"),
    ({"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "q"}]},
     r"c.jsonl:2: messages\[0\]: role 'developer' is not one of system, user, assistant, tool"),
    ({"messages": [{"role": "user", "content": 42}]}, r"c.jsonl:2: messages\[0\].content: expected a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     r"c.jsonl:2: messages\[0\].content\[0\]: a 'image_url' part; only text parts are read"),
    ({"messages": [{"role": "user", "content": "  "}]}, r"c.jsonl:2: messages\[0\]: empty user content"),
    ({"messages": []}, r"c.jsonl:2: 'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "q"}], "metadata": "x"}, r"c.jsonl:2: 'metadata' must be an object"),
    ({"messages": [{"role": "user", "content": "q"}], "metadata": {"id": "a"}}, r"c.jsonl:2: duplicate seed id 'a'"),
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
    assert fields["student_prompt"] == teacher  # the student keeps the system turn and the earlier turns
    teacher, fields = prompter.build(seeds[3])  # no system turn: the configured one, for the teacher only
    assert teacher[0] == {"role": "system", "content": "Default system prompt."}
    assert "student_prompt" not in fields and len(teacher) == 2
