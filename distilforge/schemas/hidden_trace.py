"""OpenAI's reasoning models by name: the config refuses their sampling parameters, the teacher reads
their hidden trace (core/reasoning.py splits visible ones)."""

from __future__ import annotations

import re

# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5, with or without a provider prefix or a date):
# they hide the trace, take max_completion_tokens and refuse sampling parameters.
_HIDDEN = re.compile(r"^(o\d+(-[a-z0-9.-]+)?|gpt-5(?!-chat)([a-z0-9.-]*))$")
# What those models refuse (a 400 from OpenAI): named in one error before anything is sent.
HIDDEN_REFUSES = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def hidden_trace_model(model: str) -> bool:
    """OpenAI's reasoning models, by name: their trace is hidden, only its tokens are billed."""
    return bool(_HIDDEN.match(model.rsplit("/", 1)[-1].lower()))
