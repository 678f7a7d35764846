"""A reasoning teacher on llama.cpp's server (llama-cpp-python), as a user would serve one.

llama-cpp-python 0.3.36's server has no `--reasoning-format` (that is the C++ `llama-server`'s flag);
the closest it offers is a chat template of our own (`--chat_format hf-tokenizer-config`). This one
opens the thinking in the generation prompt, as R1-distill templates do, so the model's content starts
inside `<think>` with no opening tag and (when it closes it) an orphan `</think>`. The note
(`shapes.json` in each run folder, printed with `-s`) says which shapes the server produced.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    LlamaServer,
    cot_job,
    embedded_gguf,
    failed_lines,
    free_port,
    kept_rows,
    read_run,
    rejected_rows,
    run_cli,
    write_job,
)

THINKING_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.last and not m['content'] %}<|im_start|>assistant\n<think>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
)
SYSTEM = ("Think step by step inside the thinking block, close it with </think>, "
          "then give the final answer as: The answer is N.")
LIMIT = 6


class ThinkingServer(LlamaServer):
    def __init__(self, model: Path, port: int, log_path: Path, config: Path):
        super().__init__(model, port, log_path)
        self.config = config

    def command(self) -> list[str]:
        return [*super().command(), "--chat_format", "hf-tokenizer-config", "--hf_tokenizer_config_path",
                str(self.config)]


@pytest.fixture(scope="module")
def thinking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThinkingServer]:
    folder = tmp_path_factory.mktemp("thinking-server")
    config = folder / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": THINKING_TEMPLATE, "bos_token": "", "eos_token": "<|im_end|>"}))
    server = ThinkingServer(embedded_gguf(), free_port(), folder / "server.log", config)
    server.start()
    yield server
    server.stop()


def shape_of(row: dict) -> str:
    if row.get("reasoning") is None:
        return "no trace (the thinking never closed, or no thinking)"
    return "think_no_open (orphan </think>)"


@pytest.mark.parametrize("stream", [False, True])
def test_a_thinking_template_gives_traces_and_final_answers(thinking_server, tmp_path, stream):
    job = cot_job(thinking_server.base_url, limit=LIMIT, name="compat-thinking")
    job["teacher"]["params"] = {"temperature": 0.7, "max_completion_tokens": 192}
    job["teacher"]["stream"] = stream
    job["generation"]["system_prompt"] = SYSTEM
    job["train"] = {"format": "thinking"}
    out = tmp_path / "run"
    result = run_cli("run", write_job(tmp_path / "job.yaml", job), "--output", out)
    assert result.returncode == 0, result.stdout + result.stderr
    run = read_run(out)
    kept, rejected = kept_rows(out), rejected_rows(out)
    assert len(kept) + len(rejected) + len(failed_lines(out)) == LIMIT
    for row in kept + rejected:
        assert "<think>" not in row["text"] and "</think>" not in row["text"]
        assert "</think>" not in (row["rationale"] or "")
    for row in kept:
        turn = row["messages"][-1]["content"]
        assert turn.startswith("<think>\n") and turn.count("</think>") == 1
    # llama.cpp counts no reasoning tokens: run.json says what the rows say, whatever the server reports
    assert run["tokens"]["reasoning"] == sum(r["reasoning_tokens"] for r in kept + rejected)
    note = {
        "stream": stream,
        "shapes": Counter(shape_of(r) for r in kept + rejected),
        "kept": len(kept),
        "rejected": dict(Counter(r["reject_reason"] for r in rejected)),
        "trace_bytes_kept": sum(len((r["reasoning"] or "").encode()) for r in kept),
        "tokens": run["tokens"],
        "usage_missing": run["requests"]["usage_missing"],
    }
    (out / "shapes.json").write_text(json.dumps(note, indent=1))
    print(json.dumps(note))
