"""Reasoning-model teachers end to end: every answer shape, the bill, long thinking, and training on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import api_config, load_kept, write_config, write_jsonl
from fake_openai import Behaviour

from distilforge.core.reasoning import split_reasoning
from distilforge.schemas.hidden_trace import hidden_trace_model

TRACE = "\nThree dozen is 36 eggs.\n\n36 times $0.50 is $18.\nSo the answer is 18.\n"
ANSWER = "36 eggs at $0.50 each cost $18.\nThe answer is 18."
PRICES = {"input_per_million": 1.0, "output_per_million": 4.0, "cached_input_per_million": 0.25}

SHAPES = ("reasoning_content", "reasoning", "think", "think_no_open", "hidden")
SEEDS = [{"question": f"[{shape}]: Tim buys 3 dozen eggs at $.50 each. How much does he pay?", "answer": "#### 18"}
         for shape in SHAPES] + [
    {"question": "Q-cut: Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
    {"question": "Q-silent: Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
    {"question": "Q-loop: Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
    {"question": "Q-mixed: Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
    {"question": "Q-unsupported: Tim buys 3 dozen eggs at $.50 each. How much?", "answer": "#### 18"},
]
LONG_TRACE = " ".join(f"thought{i}" for i in range(120))
SCRIPT = {
    **{f"[{shape}]": Behaviour([ANSWER], reasoning=[TRACE], shape=shape) for shape in SHAPES},
    # cut by max_completion_tokens inside the thinking, in both tagged shapes
    "Q-cut": Behaviour([ANSWER], reasoning=[LONG_TRACE], shape="think"),
    # a finished trace and no answer after it
    "Q-silent": Behaviour([""], reasoning=[TRACE], shape="reasoning_content"),
    "Q-loop": Behaviour([ANSWER], reasoning=["Wait, let me check the sum again. " * 12 + "The answer is 18."]),
    "Q-mixed": Behaviour([ANSWER], reasoning=["三打鸡蛋是三十六个鸡蛋，每个五毛钱，所以一共是十八美元。" * 3 + " The answer is 18."]),
    "Q-unsupported": Behaviour([ANSWER], reasoning=["36 * 0.5 = 17. So the answer is 17."]),
}


def _config(tmp_path: Path, fake, **teacher) -> dict:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", SEEDS)
    data = api_config(seeds, fake.base_url)
    data["generation"]["samples_per_seed"] = 1
    # a shared system prompt: what a provider's prompt cache serves again
    data["generation"]["system_prompt"] = "You are a careful teacher. Think it through, then state the final answer."
    data["teacher"]["params"] = {"temperature": 0.6, "max_completion_tokens": 100}
    data["teacher"].update(teacher)
    data["budget"] = {"prices": PRICES}
    data["train"] = {"format": "thinking"}  # shapes dataset/ even with training off
    return data


def _by_question(rows) -> dict:
    return {r["question"].split(":")[0]: r for r in rows}


@pytest.mark.parametrize("stream", [False, True])
def test_every_shape_is_captured_priced_and_counted(fake, cli, tmp_path, stream):
    fake.script = dict(SCRIPT)
    fake.prompt_cache = True
    out = tmp_path / "run"
    config = write_config(tmp_path / "job.yaml", _config(tmp_path, fake, stream=stream))
    result = cli("run", config, "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    kept = _by_question(load_kept(out))
    assert sorted(kept) == sorted(f"[{s}]" for s in SHAPES)
    assert run["rejected"] == {"unfinished_thinking": 2, "thinking_loop": 1, "language_mixing": 1,
                               "answer_not_in_thinking": 1}
    # the trace as the server sent it, whitespace kept; the tags are gone from the rationale and answer
    assert kept["[reasoning_content]"]["reasoning"] == TRACE
    assert kept["[reasoning]"]["reasoning"] == TRACE
    assert kept["[think]"]["reasoning"] == "\n" + TRACE + "\n"
    assert kept["[think_no_open]"]["reasoning"] == TRACE + "\n"
    assert kept["[hidden]"]["reasoning"] is None and kept["[hidden]"]["reasoning_tokens"] > 0
    for row in kept.values():
        assert row["answer"] == "18" and "think>" not in row["rationale"] and "think>" not in row["text"]
        turn = row["messages"][-1]["content"]
        assert turn.startswith("<think>\n") and turn.count("<think>") == 1 and turn.count("</think>") == 1
        assert turn.endswith("</think>\n\n" + ANSWER)
    # the server's bill, token for token and dollar for dollar
    reasoning, cached = fake.billed_details()
    assert cached > 0 and reasoning > 0
    assert run["tokens"]["reasoning"] == reasoning and run["tokens"]["cached_prompt"] == cached
    assert run["stages"]["generate"]["tokens"]["reasoning"] == reasoning
    assert run["stages"]["generate"]["tokens"]["cached_prompt"] == cached
    assert (run["tokens"]["prompt"], run["tokens"]["completion"]) == fake.billed_tokens()
    billed = fake.billed_usd(1.0, 4.0, cached_input_per_million=0.25)
    assert run["cost_usd"] == pytest.approx(billed, abs=1e-6)
    assert billed < fake.billed_usd(1.0, 4.0)  # the cached price was applied


def test_export_keeps_the_final_answer_or_the_think_block(fake, cli, tmp_path):
    fake.script = {"[reasoning_content]": SCRIPT["[reasoning_content]"]}
    out = tmp_path / "run"
    data = _config(tmp_path, fake)
    data["seeds"]["limit"] = 1
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    lines = []
    for flag in ([], ["--include-reasoning"]):
        result = cli("export", out, "--format", "openai-chat", "-o", tmp_path / f"e{len(flag)}", *flag)
        assert result.exit_code == 0, result.output
        files = sorted((tmp_path / f"e{len(flag)}").glob("*.jsonl"))
        lines.append(json.loads(files[0].read_text().splitlines()[0])["messages"][-1]["content"])
    assert lines[0] == ANSWER
    assert lines[1] == f"<think>\n{TRACE.strip()}\n</think>\n\n{ANSWER}"


def test_o_series_refused_params_fail_before_anything_is_sent(fake, cli, tmp_path):
    data = _config(tmp_path, fake, model="o3-mini")
    data["teacher"]["params"] = {"temperature": 0.5, "top_p": 0.9, "max_completion_tokens": 100}
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", tmp_path / "run", expect=2)
    assert result.exit_code == 2, result.output
    assert "refuses params.temperature, params.top_p" in result.output and "o3-mini" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert fake.chat_requests == 0 and not (tmp_path / "run" / "run.json").exists()


def test_o_series_hidden_trace_is_counted_and_parameters_pass_through(fake, cli, tmp_path):
    fake.script = {"[hidden]": SCRIPT["[hidden]"]}
    data = _config(tmp_path, fake, model="o4-mini-2025-04-16")
    data["teacher"]["params"] = {"max_completion_tokens": 100, "reasoning_effort": "high"}
    data["seeds"]["limit"] = 1
    data["seeds"]["path"] = str(write_jsonl(tmp_path / "one.jsonl", [SEEDS[4]]))
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    body = fake.requests[0]["body"]
    assert body["max_completion_tokens"] == 100 and body["reasoning_effort"] == "high"
    assert "temperature" not in body and "max_tokens" not in body
    row = load_kept(out)[0]
    assert row["reasoning"] is None and row["reasoning_tokens"] == fake.billed_details()[0] > 0
    assert hidden_trace_model("openai/o3") and hidden_trace_model("gpt-5-mini") and not hidden_trace_model("gpt-5-chat")


@pytest.mark.slow
def test_a_16k_token_thinking_at_40_tokens_a_second_is_kept_without_a_retry(fake, cli, tmp_path):
    """400 s of generation at 1/100 time scale (4 s), against a 120 s timeout at the same scale (1.2 s):
    streamed, the timeout is the silence between chunks, so the long answer is never cut."""
    trace = " ".join(f"step{i}" for i in range(16_000))
    fake.script = {"[reasoning_content]": Behaviour([ANSWER], reasoning=[trace])}
    fake.tokens_per_second, fake.time_scale = 40.0, 0.01
    data = _config(tmp_path, fake, stream=True, timeout=1.2)
    data["teacher"]["params"] = {"max_completion_tokens": 17_000}
    data["seeds"]["limit"] = 1
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 1 and run["requests"]["attempts"] == 1 and fake.chat_requests == 1
    assert run["tokens"]["reasoning"] == 16_000 == fake.billed_details()[0]
    assert load_kept(out)[0]["reasoning"] == trace


@pytest.mark.slow
def test_a_long_answer_not_streamed_gets_time_at_the_floor_rate(fake, cli, tmp_path):
    """Not streamed, the same answer gets max_completion_tokens / min_tokens_per_second (scaled 1/100)."""
    trace = " ".join(f"step{i}" for i in range(16_000))
    fake.script = {"[reasoning_content]": Behaviour([ANSWER], reasoning=[trace])}
    fake.tokens_per_second, fake.time_scale = 40.0, 0.01
    data = _config(tmp_path, fake, timeout=1.2, min_tokens_per_second=2_000)  # 20 tok/s at 1/100 scale
    data["teacher"]["params"] = {"max_completion_tokens": 17_000}
    data["seeds"]["limit"] = 1
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 1 and run["requests"]["attempts"] == 1 and fake.chat_requests == 1


@pytest.mark.slow
def test_an_abandoned_stream_is_charged_at_worst_case_and_retried(fake, cli, tmp_path):
    fake.script = {"[reasoning_content]": Behaviour([ANSWER], reasoning=[TRACE], failures=["stall"])}
    fake.hang_seconds = 2.0
    data = _config(tmp_path, fake, stream=True, timeout=0.5)
    data["seeds"]["limit"] = 1
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 1 and run["requests"]["unknown_outcome"] == 1
    assert run["budget"]["unknown_outcome_usd"] > 0
    # what the server billed, plus the abandoned attempt's worst case over its real bill
    assert run["cost_usd"] > fake.billed_usd(1.0, 4.0, cached_input_per_million=0.25)


def test_a_server_answering_a_stream_request_with_one_json_body_still_works(fake, cli, tmp_path):
    fake.script = {"[reasoning]": SCRIPT["[reasoning]"]}
    fake.plain_streams = True
    data = _config(tmp_path, fake, stream=True)
    data["seeds"]["path"] = str(write_jsonl(tmp_path / "one.jsonl", [SEEDS[1]]))
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    assert fake.requests[0]["body"]["stream"] is True
    assert load_kept(out)[0]["reasoning"] == TRACE


def test_a_stream_ended_by_done_without_finish_reason_is_complete(fake, cli, tmp_path):
    """llama-cpp-python 0.3.36 ends some streams with [DONE] and no finish_reason, and sends no usage."""
    fake.script = {"[reasoning]": SCRIPT["[reasoning]"]}
    fake.stream_finish_reason = False
    data = _config(tmp_path, fake, stream=True)
    data["seeds"]["path"] = str(write_jsonl(tmp_path / "one.jsonl", [SEEDS[1]]))
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 1 and run["requests"]["attempts"] == 1


def test_estimate_uses_max_completion_tokens_and_says_what_thinking_may_take(fake, cli, tmp_path):
    data = _config(tmp_path, fake)
    data["teacher"]["params"] = {"max_tokens": 64, "max_completion_tokens": 8000}
    result = cli("estimate", write_config(tmp_path / "job.yaml", data))
    assert result.exit_code == 0, result.output
    assert "max_completion_tokens (8,000)" in result.output and "thinking may take up to all 8,000" in result.output
    result = cli("estimate", tmp_path / "job.yaml", "--json")
    assert result.exit_code == 0, result.output
    est = json.loads(result.output)
    assert est["worst_case"]["completion_tokens"] == 8000 * len(SEEDS) and fake.chat_requests == 0


@pytest.mark.train
def test_thinking_format_trains_the_tiny_student(fake, cli, tmp_path, tiny_model):
    fake.script = {f"[{s}]": SCRIPT[f"[{s}]"] for s in SHAPES}
    data = _config(tmp_path, fake)
    data["seeds"]["path"] = str(write_jsonl(tmp_path / "shapes.jsonl", SEEDS[:5]))
    data["train"] = {"enabled": True, "format": "thinking", "student": str(tiny_model), "method": "lora",
                     "max_steps": 2, "batch_size": 2}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    train = json.loads((out / "run.json").read_text())["train"]
    assert train["format"] == "thinking" and train["steps"] == 2
    assert train["examples_cut"] == 0 and train["max_length"] == train["longest_example_tokens"]
    # a max_length below the longest example cuts them, and says how many
    shorter = train["longest_example_tokens"] - 1
    result = cli("train", out, "--set", f"train.max_length={shorter}", "--set", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    train = json.loads((out / "run.json").read_text())["train"]
    assert train["examples_cut"] >= 1 and train["max_length"] == shorter
    assert any("longer than max_length" in note for note in train["notes"])


def test_thinking_examples_use_the_templates_own_reasoning_field():
    from distilforge.core.formats import thinking_example

    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nt\n</think>\n\na"}]}
    assert thinking_example(row, native=False)["completion"][0]["content"] == "<think>\nt\n</think>\n\na"
    assert thinking_example(row, native=True)["completion"] == [
        {"role": "assistant", "content": "a", "reasoning_content": "t"}]


@pytest.mark.parametrize(("content", "field", "answer", "trace"), [
    ("<think>a b</think>\n\nThe answer is 1.", None, "\n\nThe answer is 1.", "a b"),
    ("a b\n</think>\n\nThe answer is 1.", None, "\n\nThe answer is 1.", "a b\n"),  # no opening tag
    ("</think>\n\nThe answer is 1.", " a b ", "\n\nThe answer is 1.", " a b "),  # orphan close after a parser
    ("<think>\nstill thinking", None, "", "\nstill thinking"),  # cut inside the thinking
    ("<think>\n\n</think>\n\nThe answer is 1.", None, "\n\nThe answer is 1.", None),  # thinking off
    ("The answer is 1.", None, "The answer is 1.", None),
])
def test_split_reasoning(content, field, answer, trace):
    assert split_reasoning(content, field) == (answer, trace)


def test_cached_input_prices_from_the_environment():
    from distilforge.service.settings import parse_prices

    prices = parse_prices("deepseek-reasoner=0.56/1.68/0.07,*=1/2")
    assert prices["deepseek-reasoner"].cached_input_per_million == 0.07 and prices["*"].cached_input_per_million is None
    assert prices["deepseek-reasoner"].cost(1000, 100, 400) == pytest.approx((600 * 0.56 + 400 * 0.07 + 100 * 1.68) / 1e6)
    assert parse_prices('{"m": [1, 2, 0.5]}')["m"].cached_input_per_million == 0.5
    # a service job is priced by the server, cached input included
    from distilforge.schemas import TeacherConfig
    from distilforge.service.prices import teacher_price

    teacher = TeacherConfig(backend="openai", model="deepseek-reasoner", base_url="https://api.deepseek.com/v1")
    assert teacher_price(teacher, prices).cached_input_per_million == 0.07


def test_trace_checks_follow_their_knobs(fake, cli, tmp_path):
    fake.script = dict(SCRIPT)
    data = _config(tmp_path, fake)
    data["thinking"] = {"max_tokens": 10, "loop_repeats": None, "other_script_share": None, "answer_supported": False}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["rejected"] == {"unfinished_thinking": 2, "thinking_length": 5}
    assert sorted(_by_question(load_kept(out))) == ["Q-mixed", "Q-unsupported", "[hidden]"]
    data["thinking"] = {"bogus": 1}
    result = cli("run", write_config(tmp_path / "bad.yaml", data), "--output", tmp_path / "bad", expect=2)
    assert result.exit_code == 2 and "thinking.bogus" in result.output


def test_a_template_that_opens_the_thinking_makes_a_cut_trace_unfinished(fake, cli, tmp_path):
    """R1-distill without a parser: the content starts inside the thinking; cut before </think>, it has no tag."""
    fake.script = {"[think_no_open]": Behaviour([ANSWER], reasoning=[TRACE, LONG_TRACE], shape="think_no_open")}
    data = _config(tmp_path, fake, opens_thinking=True)
    data["seeds"]["path"] = str(write_jsonl(tmp_path / "one.jsonl", [SEEDS[3]]))
    data["generation"]["samples_per_seed"] = 2
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert run["kept"] == 1 and run["rejected"] == {"unfinished_thinking": 1}
    assert load_kept(out)[0]["reasoning"] == TRACE + "\n"


QWEN3_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and m['reasoning_content'] is defined %}"
    "<think>\n{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.train
def test_a_student_template_with_reasoning_content_gets_the_trace_there(fake, cli, tmp_path, tiny_model):
    import shutil

    student = tmp_path / "student-qwen3-like"
    shutil.copytree(tiny_model, student)
    config_path = student / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config["chat_template"] = QWEN3_LIKE
    config_path.write_text(json.dumps(tok_config))
    (student / "chat_template.jinja").unlink(missing_ok=True)
    fake.script = {"[reasoning_content]": SCRIPT["[reasoning_content]"]}
    data = _config(tmp_path, fake)
    data["seeds"]["path"] = str(write_jsonl(tmp_path / "one.jsonl", [SEEDS[0]] * 1))
    data["train"] = {"enabled": True, "format": "thinking", "student": str(student), "method": "lora", "max_steps": 1}
    out = tmp_path / "run"
    result = cli("run", write_config(tmp_path / "job.yaml", data), "--output", out)
    assert result.exit_code == 0, result.output
    train = json.loads((out / "run.json").read_text())["train"]
    assert train["steps"] == 1 and any("reasoning_content" in note for note in train["notes"])
