"""Publish a run's dataset to the Hub: data and card in one commit, so nothing is half-pushed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class PublishError(RuntimeError):
    """Publishing failed; the message says what was and was not uploaded."""


def publish_dataset(run_dir: Path, repo_id: str, *, private: bool = True) -> dict[str, Any]:
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError("publishing needs a Hugging Face token in the HF_TOKEN environment variable")
    if repo_id.count("/") != 1:
        raise PublishError(f"--repo {repo_id!r}: expected ORG/NAME")
    parquet, card = run_dir / "parquet", run_dir / "dataset" / "README.md"
    files = {f"data/{p.stem}.parquet": p for p in sorted(parquet.glob("*.parquet")) if p.stem != "rejected"}
    if not files or not card.exists():
        raise PublishError(f"{run_dir}: no dataset to publish (run `distilforge generate` first)")

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    except Exception as exc:
        raise PublishError(f"could not create {repo_id}: {exc}; nothing was uploaded") from None
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card)))
    try:
        commit = api.create_commit(repo_id, repo_type="dataset", operations=operations,
                                   commit_message=f"distilforge: {', '.join(files)} + card")
    except Exception as exc:
        raise PublishError(f"the upload to {repo_id} failed: {exc}; the repository exists but none of "
                           f"{', '.join([*files, 'README.md'])} was committed") from None
    return {"repo": repo_id, "url": str(url), "commit": getattr(commit, "oid", None), "files": [*files, "README.md"],
            "private": private}


def model_card(run: dict[str, Any], repo_id: str) -> str:
    train, ev = run.get("train") or {}, run.get("eval") or {}
    dataset = (run.get("published") or {}).get("repo")
    lines = ["---", "library_name: " + ("peft" if train.get("method") in ("lora", "qlora") else "transformers"),
             "tags: [distillation, distilforge, trl, sft]"]
    if dataset:
        lines.append(f"datasets: [{dataset}]")
    lines += ["---", "", f"# {repo_id}", "",
              f"A student distilled with distilforge from teacher `{run.get('teacher', {}).get('model', '?')}`: "
              f"{train.get('method', '?')} fine-tuning of `{train.get('student', '?')}` with TRL's SFTTrainer "
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

    token = os.environ.get("HF_TOKEN")
    if not token:
        raise PublishError("publishing needs a Hugging Face token in the HF_TOKEN environment variable")
    student = run_dir / "student"
    # PEFT writes its own README.md stub; ours (below) replaces it.
    files = sorted(p for p in student.rglob("*") if p.is_file() and p.name != "README.md") if student.exists() else []
    if not files:
        raise PublishError(f"{run_dir}: no trained student to publish (run `distilforge train` first)")
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    except Exception as exc:
        raise PublishError(f"could not create {repo_id}: {exc}; nothing was uploaded") from None
    operations = [CommitOperationAdd(path_in_repo=str(p.relative_to(student)), path_or_fileobj=str(p)) for p in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card(run, repo_id).encode()))
    try:
        commit = api.create_commit(repo_id, repo_type="model", operations=operations,
                                   commit_message="distilforge: student and model card")
    except Exception as exc:
        raise PublishError(f"the upload to {repo_id} failed: {exc}; the repository exists but nothing was committed") from None
    return {"repo": repo_id, "url": str(url), "commit": getattr(commit, "oid", None),
            "files": [op.path_in_repo for op in operations], "private": private}
