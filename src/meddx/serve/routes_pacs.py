"""The DICOM routes of :func:`meddx.serve.app.create_app`: ``?output=dicom`` replies and ``POST
/v1/models/{name}/pacs`` (registered only when the app is given a DICOMweb URL)."""

# no ``from __future__ import annotations``: FastAPI reads the route's annotations (see app.py)
import asyncio
from typing import Any

from meddx.errors import MeddxError


async def _in_thread(fn: Any, limits: Any, limiter: Any, *args: Any) -> Any:
    import anyio
    from fastapi import HTTPException

    from meddx.serve.uploads import public_message

    try:
        job = anyio.to_thread.run_sync(fn, *args, limiter=limiter)
        return await asyncio.wait_for(job, limits.timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(504, f"prediction took longer than {limits.timeout_s:g} s") from None
    except MeddxError as exc:
        raise type(exc)(public_message(exc)) from None


async def dicom_response(model: Any, data: bytes, limits: Any, limiter: Any) -> Any:
    from fastapi.responses import Response

    from meddx.serve.dicom import dicom_reply

    body, content_type = await _in_thread(dicom_reply, limits, limiter, model, data)
    return Response(body, media_type=content_type)


def pacs_route(app: Any, served: dict[str, Any], limits: Any, pacs_url: str) -> None:
    from fastapi import File, HTTPException, UploadFile

    from meddx.serve.dicom import send_to_pacs

    @app.post("/v1/models/{name}/pacs", summary="Send the de-identified upload and its DICOM results to the PACS")
    async def to_pacs(name: str, file: UploadFile = File(..., description="a DICOM file or a zip of one series")
                      ) -> dict[str, Any]:
        if name not in served:
            raise HTTPException(404, f"no model named {name!r} (served: {', '.join(served)})")
        data = await file.read()
        if len(data) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload too large (limit {limits.max_upload_bytes:,} bytes)")
        return await _in_thread(send_to_pacs, limits, app.state.decoders, served[name], data, pacs_url)
