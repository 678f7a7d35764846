"""The HTTP API (FastAPI; OpenAPI docs at /docs). Every /v1 route needs a bearer token.

A job or schedule belongs to the owner of the token that made it; other owners get 404 on it, admin
tokens see everything. Bodies are size-capped before they are read (413), parsed off the event loop
within a node budget, and checked against the settings (422 naming the field). Answers carry no
secrets and no absolute server paths.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from distilforge.service.budgets import Ledger
from distilforge.service.db import make_engine, make_sessions
from distilforge.service.migrate import migrate
from distilforge.service.routes import browse, jobs, ops, schedules
from distilforge.service.routes.deps import Service, error_loc
from distilforge.service.settings import Settings
from distilforge.service.store import Store
from distilforge.service.worker import public_text, redact_logs

log = logging.getLogger("distilforge.api")


def create_app(settings: Settings | None = None, *, workers: int = 1, scheduler: bool = True) -> FastAPI:
    """The app: one `Service` (what every route depends on), the body guard, the error shapes, background
    workers and the scheduler, and the routers, one per resource."""
    settings = settings or Settings()
    settings.register_secrets()
    redact_logs()
    _warn_about_entries(settings)
    engine = make_engine(settings.database_url)
    migrate(engine)  # serve creates and migrates its database on start
    store = Store(make_sessions(engine), settings.lease_seconds)
    registry, http_requests = ops.metrics_registry(store)
    svc = Service(settings, store, Ledger(store.sessions), registry)
    app = FastAPI(title="distilforge", version=__import__("distilforge").__version__)
    app.state.service, app.state.store, app.state.settings = svc, store, settings
    app.state.stop, app.state.threads = threading.Event(), []
    app.add_middleware(Guard, max_bytes=settings.limits.body_bytes, counter=http_requests)
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal)
    app.router.add_event_handler("startup", lambda: _start_background(app, store, settings, workers, scheduler))
    app.router.add_event_handler("shutdown", lambda: _stop_background(app))
    for routes in (jobs, browse, schedules, ops):
        app.include_router(routes.router)
    return app


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = [{"loc": error_loc(e.get("loc", ())), "msg": public_text(str(e.get("msg", "invalid")), 500)}
              for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    log.error("%s %s failed: %s", request.method, request.url.path, public_text(f"{type(exc).__name__}: {exc}"))
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _start_background(app: FastAPI, store: Store, settings: Settings, workers: int, scheduler: bool) -> None:
    from distilforge.service.scheduler import run_scheduler
    from distilforge.service.worker import Worker

    for i in range(workers):
        worker = Worker(store, settings, owner=f"serve-{uuid.uuid4().hex[:6]}-{i}")
        thread = threading.Thread(target=worker.run_forever, args=(app.state.stop,), daemon=True)
        thread.start()
        app.state.threads.append(thread)
    if scheduler:
        thread = threading.Thread(target=run_scheduler, args=(store, settings, app.state.stop), daemon=True)
        thread.start()
        app.state.threads.append(thread)


def _stop_background(app: FastAPI) -> None:
    app.state.stop.set()
    app.state.service.pool.shutdown(wait=False, cancel_futures=True)


def _warn_about_entries(settings: Settings) -> None:
    from distilforge.core.urls import UrlError, parse_url

    for entry in settings.allowed_teachers:
        try:
            parse_url(entry)
        except UrlError as exc:
            log.warning("DISTILFORGE_ALLOWED_TEACHERS: an entry is ignored (%s)", exc)


class Guard:
    """Pure ASGI middleware: counts requests, and refuses bodies over the cap (413) before they are
    read whole, by Content-Length and by the bytes actually streamed."""

    def __init__(self, app: Any, max_bytes: int, counter: Any):
        self.app, self.max_bytes, self.counter = app, max_bytes, counter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.counter.inc()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            response = JSONResponse({"detail": f"the body is larger than {self.max_bytes} bytes"}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(status_code=413, detail=f"the body is larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)
