"""For whoever runs the service: /healthz, /metrics (an admin token unless made public) and /v1/budget."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import func, select

from distilforge.service.db import STATES, Job
from distilforge.service.routes.deps import Service, authorize, bearer, get_service, owned_schedules
from distilforge.service.settings import Principal
from distilforge.service.store import COUNTERS, Store

router = APIRouter()


@router.get("/healthz")
async def healthz(svc: Service = Depends(get_service)) -> dict[str, str]:
    def ping() -> None:
        with svc.store.sessions() as s:
            s.execute(select(1))

    await asyncio.to_thread(ping)
    return {"status": "ok"}


@router.get("/metrics")
def prometheus(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
               svc: Service = Depends(get_service)) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if not svc.settings.metrics_public:  # the counts cover every owner: an admin token, unless made public
        who = svc.principal(credentials)
        if not who.admin:
            raise HTTPException(status_code=403, detail="/metrics needs an admin token "
                                                        "(or DISTILFORGE_METRICS_PUBLIC=1)")
    return Response(generate_latest(svc.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/budget")
def budget(who: Principal = Depends(authorize), svc: Service = Depends(get_service)) -> dict[str, Any]:
    settings = svc.settings
    if who.admin:
        return {"monthly_cap_usd": settings.monthly_cap_usd, "owner_caps_usd": settings.owner_caps,
                "scopes": svc.ledger.usage()}
    with svc.store.sessions() as s:
        mine = [x.id for x in s.scalars(owned_schedules(who))]
    # An owner sees their own spend (their owner and schedule scopes), not the others' through the global one.
    prefixes = [f"owner:{who.owner}:", *(f"schedule:{i}:" for i in mine)]
    return {"monthly_cap_usd": settings.monthly_cap_usd, "owner_cap_usd": settings.owner_caps.get(who.owner),
            "scopes": svc.ledger.usage(prefixes)}


def metrics_registry(store: Store) -> tuple[Any, Any]:
    """The app's own Prometheus registry (never the process-wide one: several apps may share a process) and
    its request counter, which the body guard increments."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import Counter as PromCounter

    registry = CollectorRegistry()
    http_requests = PromCounter("distilforge_http_requests", "HTTP requests received", registry=registry)
    registry.register(StoreCollector(store))
    return registry, http_requests


class StoreCollector:
    """/metrics: job counts by state and totals over finished jobs, read from a few rows when scraped.

    Counts only: no job ids, owners, paths or names.
    """

    def __init__(self, store: Store):
        self.store = store

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self.store.sessions() as s:
            states = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        jobs = GaugeMetricFamily("distilforge_jobs", "Jobs by state", labels=["state"])
        for state in STATES:
            jobs.add_metric([state], states.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("distilforge_queue_depth", "Jobs waiting for a worker", value=states.get("queued", 0))
        counters = self.store.counters()
        helps = {"teacher_requests": "Teacher requests sent", "rate_limited": "Teacher requests answered 429",
                 "prompt_tokens": "Prompt tokens", "completion_tokens": "Completion tokens",
                 "kept": "Records kept", "rejected": "Records rejected", "spend_usd": "Teacher spend (USD)"}
        for name in COUNTERS:
            yield CounterMetricFamily(f"distilforge_{name}", f"{helps[name]}, over finished jobs",
                                      value=counters.get(name, 0.0))
