"""Reasoning models: where their trace comes in (which of them hide it: schemas/hidden_trace.py).

Servers hand the thinking back in one of four shapes:
- `message.reasoning_content` (DeepSeek's API; vLLM and SGLang with a reasoning parser);
- `message.reasoning` (OpenRouter, Ollama, llama.cpp's `--reasoning-format`);
- `<think>...</think>` at the head of the content (a model served without a parser), sometimes with
  no opening tag because the chat template already opened it (R1-distill), which leaves an orphan
  `</think>`;
- nothing but `usage.completion_tokens_details.reasoning_tokens` (OpenAI's o-series, gpt-5).

`split_reasoning` turns any of them into (final answer, trace): the rationale and the answer are
read from the final answer only; the trace keeps its whitespace.
"""

from __future__ import annotations

from typing import Any

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(content: str | None, reasoning: str | None = None, *,
                    opened: bool = False) -> tuple[str, str | None]:
    """(final answer, trace or None) from a message's content and its reasoning field, if any.

    A thinking that never closed (cut by the token limit) leaves the whole trace and an empty answer.
    `opened`: the chat template opens the thinking itself (R1-distill), so content with no tag at all is
    a thinking that never closed.
    """
    text = content or ""
    if reasoning is not None and reasoning.strip():
        # The parser already took the trace out; a stray closing tag may still lead the content.
        head = text.lstrip()
        if head.startswith(CLOSE):
            text = head[len(CLOSE):]
        return text, reasoning
    head = text.lstrip()
    if head.startswith(OPEN):
        body = head[len(OPEN):]
        end = body.find(CLOSE)
        if end < 0:
            return "", body  # still thinking when it stopped
        trace, text = body[:end], body[end + len(CLOSE):]
    elif CLOSE in text:
        # No opening tag: the template opened the thinking, the content starts inside it.
        end = text.find(CLOSE)
        trace, text = text[:end], text[end + len(CLOSE):]
    elif opened and text.strip():
        return "", text
    else:
        return text, None
    # An empty block (Qwen3 with thinking off) is no trace.
    return text, (trace if trace.strip() else None)


def unfinished(answer: str, reasoning: str | None) -> bool:
    """A thinking with no final answer after it (cut by the limit, or the model never answered)."""
    return reasoning is not None and not answer.strip()


def think_turn(reasoning: str | None, answer: str) -> str:
    """The assistant turn of `train.format: thinking`: exactly one think block, then the answer."""
    return f"{OPEN}\n{(reasoning or '').strip()}\n{CLOSE}\n\n{answer.strip()}"


def parse_think_turn(content: str) -> tuple[str | None, str]:
    """(trace, answer) of a turn written by `think_turn` (a chat template maps the trace its own way)."""
    answer, trace = split_reasoning(content)
    return (trace.strip() if trace is not None else None), answer.strip()


def usage_details(usage: dict[str, Any]) -> tuple[int, int]:
    """(reasoning tokens, cached prompt tokens) from an OpenAI-style usage block (0 when not reported)."""
    done = usage.get("completion_tokens_details") or {}
    prompt = usage.get("prompt_tokens_details") or {}
    # DeepSeek also reports prompt_cache_hit_tokens beside the OpenAI field.
    cached = prompt.get("cached_tokens") if isinstance(prompt, dict) else None
    if cached is None:
        cached = usage.get("prompt_cache_hit_tokens")
    reasoning = done.get("reasoning_tokens") if isinstance(done, dict) else None
    return int(reasoning or 0), int(cached or 0)
