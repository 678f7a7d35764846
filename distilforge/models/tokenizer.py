"""A model's tokenizer alone (no weights), and a fingerprint of its vocabulary.

White-box distillation compares the teacher's and the student's next-token distributions position by
position, so both must map the same strings to the same ids: `vocabulary` says whether they do
without loading (or dequantizing) either model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from distilforge.models.resolve import EMBEDDED, check_model, embedded_gguf, gguf_cache_folder


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a model spec (alias, folder, .gguf file or Hub id), without its weights."""
    from transformers import AutoTokenizer

    check_model(spec)
    path = embedded_gguf(spec) if spec in EMBEDDED else Path(spec).expanduser()
    if path.is_dir():
        return AutoTokenizer.from_pretrained(str(path))
    if path.is_file():  # a GGUF file: the dequantized folder if there is one, else the file's metadata
        cached = gguf_cache_folder(path)
        if (cached / ".complete").exists():
            return AutoTokenizer.from_pretrained(str(cached))
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(spec)  # a Hub id: from the HF cache when offline


def check_loadable(spec: str) -> None:
    """A folder or Hub id whose tokenizer and config load (no weights), checked before the first paid
    request; the embedded aliases and GGUF files are checked by `check_model`. Raises ModelError."""
    from distilforge.models.resolve import ModelError

    check_model(spec)
    if spec in EMBEDDED or Path(spec).expanduser().is_file():
        return
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec)
        load_tokenizer(spec)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelError(f"model '{spec}': its config or tokenizer cannot be loaded ({reason})") from None


def vocabulary(tokenizer: Any) -> tuple[int, str]:
    """(number of tokens, hash of the token -> id map), added tokens included."""
    items = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()[:16]
    return len(items), digest
