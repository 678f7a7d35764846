"""Routes for a person with a browser: a job's run.json, eval results, log and OpenAI export, a report
link that opens without a token (signed, short-lived).

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
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from distilforge.service.routes.deps import Service, authorize, get_service
from distilforge.service.settings import Principal
from distilforge.service.worker import LOG_FILE, public_data, public_text

LINK_SECONDS_ENV = "DISTILFORGE_REPORT_LINK_SECONDS"
LINK_SECRET_ENV = "DISTILFORGE_LINK_SECRET"
EVAL_FILES = ("before", "after")
_SECRET = os.environ.get(LINK_SECRET_ENV, "").encode() or secrets.token_bytes(32)

router = APIRouter()


def link_seconds() -> int:
    raw = os.environ.get(LINK_SECONDS_ENV, "").strip()
    return max(1, int(raw)) if raw.isdigit() else 900


def sign(job_id: str, expires: int) -> str:
    """The report link's signature: an HMAC of the job and its expiry with the server's key
    (DISTILFORGE_LINK_SECRET, shared by API replicas; else one drawn at start, so a restart voids links)."""
    return hmac.new(_SECRET, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def run_dir_of(svc: Service, job_id: str, who: Principal) -> Path:
    """The owner-checked job's run folder, or a 409 while it has no run.json yet."""
    run_dir = Path(svc.job(job_id, who).run_dir)
    if not (run_dir / "run.json").exists():
        raise HTTPException(status_code=409, detail="the job has not produced a run yet")
    return run_dir


def public_json(svc: Service, data: Any, run_dir: Path) -> Response:
    text = svc.server_paths(json.dumps(public_data(data)), run_dir)
    return Response(text, media_type="application/json")


@router.get("/v1/jobs/{job_id}/run")
def run_json(job_id: str, who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> Response:
    run_dir = run_dir_of(svc, job_id, who)
    return public_json(svc, json.loads((run_dir / "run.json").read_text(encoding="utf-8")), run_dir)


@router.get("/v1/jobs/{job_id}/eval")
def eval_results(job_id: str, which: str | None = None, who: Principal = Depends(authorize),
                 svc: Service = Depends(get_service)) -> Response:
    run_dir = run_dir_of(svc, job_id, who)
    if which is None:
        run = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        files = [w for w in EVAL_FILES if (run_dir / "eval" / f"{w}.jsonl").exists()]
        return public_json(svc, {"job": job_id, "eval": run.get("eval"), "questions": files}, run_dir)
    if which not in EVAL_FILES or not (run_dir / "eval" / f"{which}.jsonl").exists():
        raise HTTPException(status_code=404, detail="no such eval file (before or after)")
    text = (run_dir / "eval" / f"{which}.jsonl").read_text(encoding="utf-8")
    return Response(svc.server_paths(text, run_dir), media_type="application/x-ndjson")


@router.get("/v1/jobs/{job_id}/logs")
def logs(job_id: str, tail: int = 200, who: Principal = Depends(authorize),
         svc: Service = Depends(get_service)) -> PlainTextResponse:
    run_dir = Path(svc.job(job_id, who).run_dir)
    path = run_dir / LOG_FILE
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    shown = lines[-max(1, min(tail, 10_000)):]
    return PlainTextResponse("\n".join(public_text(svc.server_paths(line, run_dir), 2000) or "" for line in shown)
                             + ("\n" if shown else ""))


@router.get("/v1/jobs/{job_id}/export")
def export(job_id: str, split: str = "train", who: Principal = Depends(authorize),
           svc: Service = Depends(get_service)) -> Response:
    from distilforge.publish.export import SPLITS, ExportError, export_run

    run_dir = run_dir_of(svc, job_id, who)
    if split not in SPLITS:
        raise HTTPException(status_code=404, detail="no such split (train or validation)")
    try:
        result = export_run(run_dir, "openai-chat")
    except ExportError as exc:
        raise HTTPException(status_code=409, detail=svc.server_paths(str(exc), run_dir)) from None
    path = result.output / f"{split}.jsonl"
    if not path.exists():
        raise HTTPException(status_code=404, detail=f"no valid {split} row to export")
    headers = {"Content-Disposition": f'attachment; filename="{job_id}-{split}.jsonl"'}
    if result.warnings:
        headers["X-Distilforge-Warning"] = "; ".join(result.warnings)
    return Response(path.read_bytes(), media_type="application/x-ndjson", headers=headers)


# A report link that opens in a browser without a token: signed, for one job, short-lived.
@router.get("/v1/jobs/{job_id}/report-link")
def report_link(job_id: str, who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> JSONResponse:
    run_dir_of(svc, job_id, who)
    expires = int(time.time()) + link_seconds()
    url = f"/v1/reports/{job_id}?expires={expires}&sig={sign(job_id, expires)}"
    return JSONResponse({"url": url, "expires": expires, "seconds": link_seconds()})


@router.get("/v1/reports/{job_id}", response_class=HTMLResponse)
def signed_report(job_id: str, expires: int = 0, sig: str = "", svc: Service = Depends(get_service)) -> HTMLResponse:
    # No token: the signature is the permission, for this job only, until it expires.
    if not hmac.compare_digest(sig, sign(job_id, expires)):
        raise HTTPException(status_code=403, detail="invalid link")
    if time.time() > expires:
        raise HTTPException(status_code=410, detail="this link has expired; ask /v1/jobs/{id}/report-link again")
    from distilforge.report import build_report

    run_dir = Path(svc.job(job_id, _SIGNED_LINK).run_dir)
    if not (run_dir / "run.json").exists():
        raise HTTPException(status_code=409, detail="the job has not produced a run yet")
    html_path, _ = build_report(run_dir)
    return HTMLResponse(svc.server_paths(html_path.read_text(encoding="utf-8"), run_dir))


# The lookup identity of a signed link: the job was checked against its owner when the link was made.
_SIGNED_LINK = Principal(owner="(signed link)", admin=True)
