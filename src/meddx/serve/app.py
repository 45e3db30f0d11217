"""``create_app(runs, ...)``: the FastAPI application behind ``meddx serve``.

Each run is loaded once (a :class:`~meddx.engine.predict.Predictor`) when the app is created. Routes:

* ``GET /v1/models`` (and ``/v1/models/{name}``): model cards (task, classes, input spec, training data, test
  metrics with 95% CIs and ECE, intended use and limits, meddx version, sha256 of the model files).
* ``POST /v1/models/{name}/predict`` (multipart field ``file``): the task's result dict (as ``meddx predict
  --json`` gives it) plus ``runtime`` and ``notices``; ``?explain=<method>`` adds a heat map.
* ``GET /healthz``, ``/readyz``, ``/metrics`` (Prometheus text), ``/docs`` (OpenAPI), ``/`` (a web page).

Every bad upload is a 4xx with ``{"detail": "<one line>"}``; limits are in :class:`~meddx.serve.guard.Limits`.
"""

# no ``from __future__ import annotations``: FastAPI reads the route's annotations (UploadFile is imported
# inside the function that defines the route, so string annotations could not be resolved)
import asyncio
import logging
import os
import re
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError
from meddx.serve.guard import Guard, Limits
from meddx.serve.metrics import Metrics

log = logging.getLogger("meddx.serve")


def create_app(runs: Sequence[str | Path], runtime: str = "auto", token: str | None = None,
               limits: Limits | None = None, device: str = "cpu", pacs_url: str | None = None) -> Any:
    """A FastAPI app serving ``runs`` (run folders; each is served under its folder name); with ``pacs_url`` (a
    DICOMweb root) it can also send de-identified DICOM results to that PACS."""
    from fastapi import FastAPI

    from meddx.serve.models import load_model

    limits = limits or Limits()
    if not runs:
        raise MeddxError("no runs given to serve")
    served: dict[str, Any] = {}
    for run in runs:
        model = load_model(run, runtime=runtime, device=device)
        if model.name in served:
            raise MeddxError(f"two runs are named {model.name!r}; serve folders with different names", run)
        served[model.name] = model
    metrics, batchers = Metrics(), {}

    @asynccontextmanager
    async def lifespan(app: Any):
        from meddx.serve.batching import MicroBatcher

        for name, model in served.items():
            if model.is_classifier:
                size = limits.max_batch if limits.batching else 1
                batchers[name] = MicroBatcher(model.predictor.predict_tensor, size, limits.max_wait_ms, name)
                batchers[name].start()
        app.state.decoders = decoder_limiter()
        app.state.ready = True
        yield
        app.state.ready = False
        for b in batchers.values():
            await b.stop()

    app = FastAPI(title="meddx", version=_version(), lifespan=lifespan,
                  description="Medical image classifiers (and segmentation/detection) trained with meddx. "
                              "Research and teaching only: not a medical device.")
    app.state.ready, app.state.served, app.state.batchers, app.state.metrics = False, served, batchers, metrics
    _error_handlers(app)
    _info_routes(app, served, batchers, metrics)
    _predict_route(app, served, batchers, limits)
    if pacs_url:
        from meddx.serve.routes_pacs import pacs_route

        pacs_route(app, served, limits, pacs_url)
    from meddx.serve.page import page_html

    app.get("/", include_in_schema=False)(_html_route(page_html(pacs=bool(pacs_url))))
    app.add_middleware(Guard, limits=limits, metrics=metrics, token=token)
    return app


def _version() -> str:
    from meddx.serve.models import meddx_version

    return meddx_version()


def _html_route(html: str) -> Any:
    from fastapi.responses import HTMLResponse

    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    return page


def _error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from meddx.serve.uploads import UnsupportedType, public_message

    async def user_error(request: Any, exc: MeddxError) -> JSONResponse:
        return JSONResponse({"detail": public_message(exc)}, status_code=415 if isinstance(exc, UnsupportedType)
                            else 400)

    async def invalid(request: Any, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return JSONResponse({"detail": f"{where}: {first.get('msg', 'invalid request')} (multipart field "
                                       "'file' holds the image)"}, status_code=422)

    async def internal(request: Any, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    app.add_exception_handler(MeddxError, user_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, internal)


def _info_routes(app: Any, served: dict[str, Any], batchers: dict[str, Any], metrics: Metrics) -> None:
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse, PlainTextResponse

    @app.get("/v1/models", summary="Model cards of every served run")
    async def list_models() -> dict[str, Any]:
        return {"models": [m.card for m in served.values()]}

    @app.get("/v1/models/{name}", summary="The model card of one run")
    async def one_model(name: str) -> dict[str, Any]:
        if name not in served:
            raise HTTPException(404, f"no model named {name!r} (served: {', '.join(served)})")
        return served[name].card

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Models are loaded and the batchers are running")
    async def readyz() -> JSONResponse:
        ready = bool(app.state.ready)
        return JSONResponse({"ready": ready, "models": list(served)}, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        gauges = {
            "meddx_batch_queue_depth": ("Images waiting for the next micro-batch.",
                                        lambda: sum(b.depth for b in batchers.values())),
            "meddx_batches_total": ("Runtime calls made by the micro-batchers.",
                                    lambda: sum(b.batches for b in batchers.values())),
            "meddx_batch_items_total": ("Images in those runtime calls.",
                                        lambda: sum(b.items for b in batchers.values())),
        }
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")


def _predict_route(app: Any, served: dict[str, Any], batchers: dict[str, Any], limits: Limits) -> None:
    from fastapi import File, HTTPException, Query, UploadFile

    from meddx.explain.methods import list_methods

    @app.post("/v1/models/{name}/predict", summary="Predict on one uploaded image")
    async def predict(name: str, file: UploadFile = File(..., description=f"the image ({_accepted()})"),
                      explain: str | None = Query(None, description=f"heat-map method: {', '.join(list_methods())}"),
                      image: bool = Query(False, description="also return the model's input as a PNG"),
                      output: str = Query("json", description="json | dicom: the de-identified SR / SEG / SC "
                                          "as multipart/related DICOM (DICOM uploads)")
                      ) -> Any:
        if name not in served:
            raise HTTPException(404, f"no model named {name!r} (served: {', '.join(served)})")
        if explain is not None:
            from meddx.explain.methods import get_method

            get_method(explain)  # an unknown method: 400 listing the registered ones
        if output not in ("json", "dicom"):
            raise HTTPException(400, f"output must be json or dicom, not {output[:40]!r}")
        data = await file.read()
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload too large (limit {limits.max_upload_bytes:,} bytes)")
        if output == "dicom":
            from meddx.serve.routes_pacs import dicom_response

            return await dicom_response(served[name], data, limits, app.state.decoders)
        job = _answer(served[name], batchers.get(name), data, _label(file.filename), (explain, image),
                      app.state.decoders)
        try:
            return await asyncio.wait_for(job, limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"prediction took longer than {limits.timeout_s:g} s") from None


def _accepted() -> str:
    from meddx.serve.uploads import ACCEPTED

    return ACCEPTED


def _label(filename: str | None) -> str:
    """The client's file name as a display label only (last component, printable, at most 120 characters)."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:120]
    return name or "upload"


def decoder_limiter() -> Any:
    """At most ``cpu_count`` (2..8) decoding threads per app: decoding holds the GIL for most of its time, and
    dozens of threads taking turns on it cost more than they overlap. Made inside the app's event loop."""
    import anyio

    return anyio.CapacityLimiter(max(2, min(8, os.cpu_count() or 2)))


async def _answer(model: Any, batcher: Any, data: bytes, label: str, options: tuple[str | None, bool],
                  limiter: Any) -> dict[str, Any]:
    import anyio

    from meddx.serve.models import b64png, explain_one, image_png, predict_other, read_input
    from meddx.serve.uploads import public_message, upload_file

    def decode() -> tuple[Any, list[str]]:
        with upload_file(data) as path:
            return read_input(model, path)

    def other() -> dict[str, Any]:
        with upload_file(data) as path:
            return predict_other(model, path, label)

    def run_in_threadpool(fn: Any, *args: Any) -> Any:
        return anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    method, want_image = options
    try:
        if not model.is_classifier:
            if method is not None:
                raise MeddxError(f"heat-map explanations are for classification runs; {model.name} is a "
                                 f"{model.predictor.task.name} run")
            return await run_in_threadpool(other) | {"runtime": model.predictor.runtime.label}
        with batcher.expecting():
            raw, notices = await run_in_threadpool(decode)
        row = await batcher.submit(raw)
        result = model.predictor.task.describe(label, row, model.predictor.classes)
        result |= {"runtime": model.predictor.runtime.label, "notices": [public_message(n) for n in notices]}
        if method is not None:
            target = int(row.argmax())
            result["explanation"] = await run_in_threadpool(explain_one, model, raw, method, target)
        elif want_image:
            result["image_png"] = b64png(await run_in_threadpool(image_png, raw))
        return result
    except MeddxError as exc:
        raise type(exc)(public_message(exc)) from None
