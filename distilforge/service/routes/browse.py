"""Routes for a person with a browser: a job's run.json, eval results, log and OpenAI export, a report
link that opens without a token (signed, short-lived), a job's stage, schedules' next fire and last job.

Everything here reads what the worker wrote in the job's run folder (chosen by the server); file names
come from fixed lists, never from the request, and answers go through the same scrubbing as the rest of
the API (no secrets, no server paths).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

LINK_SECONDS_ENV = "DISTILFORGE_REPORT_LINK_SECONDS"
LINK_SECRET_ENV = "DISTILFORGE_LINK_SECRET"
EVAL_FILES = ("before", "after")
LOG_FILE = "job.log"
_SECRET = os.environ.get(LINK_SECRET_ENV, "").encode() or secrets.token_bytes(32)


def link_seconds() -> int:
    raw = os.environ.get(LINK_SECONDS_ENV, "").strip()
    return max(1, int(raw)) if raw.isdigit() else 900


def sign(job_id: str, expires: int) -> str:
    """The report link's signature: an HMAC of the job and its expiry with the server's key
    (DISTILFORGE_LINK_SECRET, shared by API replicas; else one drawn at start, so a restart voids links)."""
    return hmac.new(_SECRET, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def content_type(header: str | None) -> str:
    """The type a job body is read as: JSON or YAML as declared; none (or curl's default form type, sent by
    `curl --data-binary @job.yaml` without -H) is read as YAML, which also reads JSON; anything else is a 415."""
    kind = (header or "").split(";")[0].strip().lower()
    if "json" in kind or "yaml" in kind:
        return kind
    if kind in ("", "application/x-www-form-urlencoded", "text/plain"):
        return "application/yaml"
    raise HTTPException(status_code=415, detail=f"a job is sent as application/json or application/yaml, not {kind}")


def job_stage(job: Any) -> str | None:
    """generate / train / eval while a job runs (from its progress), else None."""
    if job.state != "running":
        return None
    return (job.progress or {}).get("stage") or "generate"


def schedule_timing(schedule: Any, session: Any) -> dict[str, Any]:
    """A schedule's next fire time (None while paused) and its last job (id, state, created)."""
    from zoneinfo import ZoneInfo

    from croniter import croniter
    from sqlalchemy import select

    from distilforge.service.db import Job

    next_fire = None
    if not schedule.paused:
        try:
            next_fire = croniter(schedule.cron, datetime.now(ZoneInfo(schedule.timezone))).get_next(datetime).isoformat()
        except (ValueError, KeyError):
            next_fire = None
    last = session.scalars(select(Job).where(Job.schedule_id == schedule.id)
                           .order_by(Job.created.desc()).limit(1)).first() if session is not None else None
    return {"next_fire": next_fire,
            "last_job": {"id": last.id, "state": last.state, "created": last.created.isoformat()} if last else None}


def release_memory() -> None:
    """After a job (a cancelled training above all): drop cycles, the CUDA cache and glibc's free arenas,
    so a long-lived worker goes back to its idle size."""
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        import contextlib
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # another libc: nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def add_browse_routes(app: FastAPI | APIRouter, authorize: Callable[..., Any], find_job: Callable[[str, Any], Any],
                      server_paths: Callable[[str, Path], str]) -> None:
    """Mount the routes on `app`; `find_job(id, who)` is the API's owner-checked lookup (404 otherwise)."""

    def run_dir_of(job_id: str, who: Any) -> Path:
        run_dir = Path(find_job(job_id, who).run_dir)
        if not (run_dir / "run.json").exists():
            raise HTTPException(status_code=409, detail="the job has not produced a run yet")
        return run_dir

    def public_json(data: Any, run_dir: Path) -> Response:
        from distilforge.service.worker import public_data

        text = server_paths(json.dumps(public_data(data)), run_dir)
        return Response(text, media_type="application/json")

    @app.get("/v1/jobs/{job_id}/run")
    def run_json(job_id: str, who: Any = Depends(authorize)) -> Response:
        run_dir = run_dir_of(job_id, who)
        return public_json(json.loads((run_dir / "run.json").read_text(encoding="utf-8")), run_dir)

    @app.get("/v1/jobs/{job_id}/eval")
    def eval_results(job_id: str, which: str | None = None, who: Any = Depends(authorize)) -> Response:
        run_dir = run_dir_of(job_id, who)
        if which is None:
            run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
            files = [w for w in EVAL_FILES if (run_dir / "eval" / f"{w}.jsonl").exists()]
            return public_json({"job": job_id, "eval": run.get("eval"), "questions": files}, run_dir)
        if which not in EVAL_FILES or not (run_dir / "eval" / f"{which}.jsonl").exists():
            raise HTTPException(status_code=404, detail="no such eval file (before or after)")
        text = (run_dir / "eval" / f"{which}.jsonl").read_text(encoding="utf-8")
        return Response(server_paths(text, run_dir), media_type="application/x-ndjson")

    @app.get("/v1/jobs/{job_id}/logs")
    def logs(job_id: str, tail: int = 200, who: Any = Depends(authorize)) -> PlainTextResponse:
        from distilforge.service.worker import public_text

        run_dir = Path(find_job(job_id, who).run_dir)
        path = run_dir / LOG_FILE
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
        shown = lines[-max(1, min(tail, 10_000)):]
        return PlainTextResponse("\n".join(public_text(server_paths(line, run_dir), 2000) or "" for line in shown)
                                 + ("\n" if shown else ""))

    @app.get("/v1/jobs/{job_id}/export")
    def export(job_id: str, split: str = "train", who: Any = Depends(authorize)) -> Response:
        from distilforge.publish.export import SPLITS, ExportError, export_run

        run_dir = run_dir_of(job_id, who)
        if split not in SPLITS:
            raise HTTPException(status_code=404, detail="no such split (train or validation)")
        try:
            result = export_run(run_dir, "openai-chat")
        except ExportError as exc:
            raise HTTPException(status_code=409, detail=server_paths(str(exc), run_dir)) from None
        path = result.output / f"{split}.jsonl"
        if not path.exists():
            raise HTTPException(status_code=404, detail=f"no valid {split} row to export")
        headers = {"Content-Disposition": f'attachment; filename="{job_id}-{split}.jsonl"'}
        if result.warnings:
            headers["X-Distilforge-Warning"] = "; ".join(result.warnings)
        return Response(path.read_bytes(), media_type="application/x-ndjson", headers=headers)

    add_report_links(app, authorize, find_job, server_paths, run_dir_of)


def add_report_links(app: FastAPI, authorize: Callable[..., Any], find_job: Callable[[str, Any], Any],
                     server_paths: Callable[[str, Path], str], run_dir_of: Callable[[str, Any], Path]) -> None:
    """A report link that opens in a browser without a token: signed, for one job, short-lived."""

    @app.get("/v1/jobs/{job_id}/report-link")
    def report_link(job_id: str, who: Any = Depends(authorize)) -> JSONResponse:
        run_dir_of(job_id, who)
        expires = int(time.time()) + link_seconds()
        url = f"/v1/reports/{job_id}?expires={expires}&sig={sign(job_id, expires)}"
        return JSONResponse({"url": url, "expires": expires, "seconds": link_seconds()})

    @app.get("/v1/reports/{job_id}", response_class=HTMLResponse)
    def signed_report(job_id: str, expires: int = 0, sig: str = "") -> HTMLResponse:
        # No token: the signature is the permission, for this job only, until it expires.
        if not hmac.compare_digest(sig, sign(job_id, expires)):
            raise HTTPException(status_code=403, detail="invalid link")
        if time.time() > expires:
            raise HTTPException(status_code=410, detail="this link has expired; ask /v1/jobs/{id}/report-link again")
        from distilforge.report import build_report

        run_dir = Path(find_job(job_id, _ADMIN).run_dir)
        if not (run_dir / "run.json").exists():
            raise HTTPException(status_code=409, detail="the job has not produced a run yet")
        html_path, _ = build_report(run_dir)
        return HTMLResponse(server_paths(html_path.read_text(encoding="utf-8"), run_dir))


class _Admin:
    """The lookup identity of a signed link: the job was checked against its owner when the link was made."""

    admin = True
    owner = "(signed link)"


_ADMIN = _Admin()
