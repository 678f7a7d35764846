"""/v1/jobs: submit a job, list, read and cancel jobs, their report and their dataset's Parquet splits."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from distilforge.schemas.service import JobOut
from distilforge.service.db import Job
from distilforge.service.routes.deps import Service, authorize, get_service, scope
from distilforge.service.settings import Principal
from distilforge.service.worker import public_data, public_text

router = APIRouter()


def job_stage(job: Any) -> str | None:
    """generate / train / eval while a job runs (from its progress), else None."""
    if job.state != "running":
        return None
    return (job.progress or {}).get("stage") or "generate"


def job_out(job: Job) -> JobOut:
    outcome = job.summary or {}
    return JobOut(id=job.id, state=job.state, owner=job.owner, stage=job_stage(job), progress=public_data(job.progress),
                  kept=outcome.get("kept"), rejected=outcome.get("rejected"), tokens=outcome.get("tokens"),
                  cost_usd=outcome.get("cost_usd"), stopped=outcome.get("stopped"), error=public_text(job.error),
                  attempts=job.attempts, created=job.created, updated=job.updated, schedule_id=job.schedule_id)


def _submit(svc: Service, data: Any, owner: str) -> Job:
    svc.admit(owner)  # after the (bounded) parse: a body that does not parse never costs a query
    config = svc.checked(data, owner)
    job_id = uuid.uuid4().hex
    return svc.store.submit(config, str(svc.settings.runs_dir / job_id), job_id=job_id, owner=owner)


@router.post("/v1/jobs", status_code=201, response_model=JobOut)
async def submit(request: Request, who: Principal = Depends(authorize),
                 svc: Service = Depends(get_service)) -> JobOut:
    data = await svc.body(request)
    return job_out(await svc.off_loop(_submit, svc, data, who.owner))


@router.get("/v1/jobs", response_model=list[JobOut])
def list_jobs(limit: int = 100, who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> list[JobOut]:
    return [job_out(j) for j in svc.store.list(max(1, min(limit, 1000)), owner=scope(who))]


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> JobOut:
    return job_out(svc.job(job_id, who))


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: str, who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> JobOut:
    svc.job(job_id, who)
    return job_out(svc.store.cancel(job_id))  # type: ignore[arg-type]


@router.get("/v1/jobs/{job_id}/report")
def report(job_id: str, who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> Response:
    run_dir = Path(svc.job(job_id, who).run_dir)
    if not (run_dir / "run.json").exists():
        raise HTTPException(status_code=409, detail="the job has not produced a run yet")
    from distilforge.report import build_report

    html_path, _ = build_report(run_dir)
    return HTMLResponse(svc.server_paths(html_path.read_text(encoding="utf-8"), run_dir))


@router.get("/v1/jobs/{job_id}/dataset")
def dataset(job_id: str, split: str | None = None, who: Principal = Depends(authorize),
            svc: Service = Depends(get_service)) -> Response:
    run_dir = Path(svc.job(job_id, who).run_dir)
    parquet = run_dir / "parquet"
    files = sorted(p.stem for p in parquet.glob("*.parquet")) if parquet.is_dir() else []
    if split is None:
        return JSONResponse({"job": job_id, "splits": files})
    if split not in files:  # only names listed from the run folder: no path reaches the filesystem
        raise HTTPException(status_code=404, detail="no such split")
    return FileResponse(parquet / f"{split}.parquet", media_type="application/octet-stream",
                        filename=f"{job_id}-{split}.parquet")
