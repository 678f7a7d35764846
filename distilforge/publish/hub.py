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
