"""Token counts before sending, with no tokenizer download (tiktoken fetches its files on first use).

Two numbers: an *estimate* for rate limiting (about 4 characters a token, corrected by the usage
the server reports) and an *upper bound* for the budget. Byte-level BPE tokenizers never produce more
tokens than UTF-8 bytes, so bytes plus the chat template's per-message overhead bound the prompt
from above: a reservation made from it can never be exceeded by the bill.
"""

from __future__ import annotations

import math

PER_MESSAGE_OVERHEAD = 8  # role markers and separators of chat templates, generously
PER_REQUEST_OVERHEAD = 8


def _contents(messages: list[dict[str, str]]) -> list[str]:
    return [str(m.get("content") or "") for m in messages]


def prompt_tokens_upper_bound(messages: list[dict[str, str]]) -> int:
    texts = _contents(messages)
    return sum(len(t.encode("utf-8")) for t in texts) + PER_MESSAGE_OVERHEAD * len(texts) + PER_REQUEST_OVERHEAD


def estimate_prompt_tokens(messages: list[dict[str, str]], chars_per_token: float = 4.0) -> int:
    texts = _contents(messages)
    return math.ceil(sum(len(t) for t in texts) / chars_per_token) + 4 * len(texts) + 3
