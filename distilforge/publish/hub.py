"""Publish a run's dataset to the Hub: data and card in one commit, so nothing is half-pushed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class PublishError(RuntimeError):
    """Publishing failed; the message says what was and was not uploaded."""


class PublishInputError(PublishError, ValueError):
    """Publishing cannot start (no token, no dataset, a malformed repo id): bad input, nothing sent."""


def _token() -> str:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise PublishInputError("publishing needs a Hugging Face token in the HF_TOKEN environment variable")
    return token


def _push(token: str, repo_id: str, repo_type: str, files: dict[str, str | bytes], *, private: bool,
          message: str) -> dict[str, Any]:
    """Create the repo if needed, then every file in one commit: either all land or none does."""
    if repo_id.count("/") != 1:
        raise PublishInputError(f"{repo_id!r}: expected ORG/NAME")
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    except Exception as exc:
        raise PublishError(f"could not create {repo_id}: {exc}; nothing was uploaded") from None
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in files.items()]
    try:
        commit = api.create_commit(repo_id, repo_type=repo_type, operations=operations, commit_message=message)
    except Exception as exc:
        raise PublishError(f"the upload to {repo_id} failed: {exc}; the repository exists but none of "
                           f"{', '.join(files)} was committed") from None
    return {"repo": repo_id, "url": str(url), "commit": getattr(commit, "oid", None), "files": list(files),
            "private": private}


def publish_dataset(run_dir: Path, repo_id: str, *, private: bool = True) -> dict[str, Any]:
    token = _token()
    parquet, card = run_dir / "parquet", run_dir / "dataset" / "README.md"
    files: dict[str, str | bytes] = {f"data/{p.stem}.parquet": str(p) for p in sorted(parquet.glob("*.parquet"))
                                     if p.stem != "rejected"}
    if not files or not card.exists():
        raise PublishInputError(f"{run_dir}: no dataset to publish (run `distilforge generate` first)")
    files["README.md"] = str(card)
    return _push(token, repo_id, "dataset", files, private=private,
                 message=f"distilforge: {', '.join(files)}")


def model_card(run: dict[str, Any], repo_id: str) -> str:
    train, ev = run.get("train") or {}, run.get("eval") or {}
    dataset = (run.get("published") or {}).get("repo")
    gkd = train.get("method") == "gkd"  # white-box: TRL's GKDTrainer on the teacher's logits
    adapter = train.get("method") in ("lora", "qlora") or bool(gkd and train.get("lora"))
    lines = ["---", "library_name: " + ("peft" if adapter else "transformers"),
             f"tags: [distillation, distilforge, trl, {'gkd' if gkd else 'sft'}]"]
    if dataset:
        lines.append(f"datasets: [{dataset}]")
    lines += ["---", "", f"# {repo_id}", "",
              f"A student distilled with distilforge from teacher `{run.get('teacher', {}).get('model', '?')}`: "
              f"{train.get('method', '?')} fine-tuning of `{train.get('student', '?')}` with TRL's "
              f"{'GKDTrainer' if gkd else 'SFTTrainer'} "
              f"({train.get('format', 'chat')} format, {train.get('steps', '?')} steps on {train.get('examples', '?')} "
              "examples).", ""]
    lines.append(f"Training data: [{dataset}](https://huggingface.co/datasets/{dataset}) (its card lists the teacher, "
                 "prompts, filters and provenance)." if dataset else
                 f"Training data: {run.get('kept', '?')} kept teacher rationales (dataset not published).")
    for key in ("before", "after", "teacher"):
        block = ev.get(key)
        if block:
            lines.append(f"- accuracy {key}: {block['accuracy']:.1%} (n={block['n']}, 95% CI "
                         f"{block['ci95'][0]:.1%}-{block['ci95'][1]:.1%})")
    return "\n".join(lines) + "\n"


def publish_model(run_dir: Path, repo_id: str, *, private: bool = True) -> dict[str, Any]:
    """The student (adapter or full model) and a model card linking the dataset, in one commit."""
    import json

    token = _token()
    student = run_dir / "student"
    # PEFT writes its own README.md stub; ours replaces it.
    paths = sorted(p for p in student.rglob("*") if p.is_file() and p.name != "README.md") if student.exists() else []
    if not paths:
        raise PublishInputError(f"{run_dir}: no trained student to publish (run `distilforge train` first)")
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    files: dict[str, str | bytes] = {str(p.relative_to(student)): str(p) for p in paths}
    files["README.md"] = model_card(run, repo_id).encode()
    return _push(token, repo_id, "model", files, private=private, message="distilforge: student and model card")
