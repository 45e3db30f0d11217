"""``meddx serve``: a typer sub-app over :func:`meddx.serve.app.create_app` (option parsing only)."""

from __future__ import annotations

from pathlib import Path

import typer

from meddx.utils.cli import user_errors

app = typer.Typer()


@app.command("serve")
@user_errors
def serve(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="run folders to serve (each under its folder name)"),
    host: str = typer.Option("127.0.0.1", help="address to bind (default: this machine only)"),
    port: int = typer.Option(8000),
    runtime: str = typer.Option("auto", help="auto | torch | onnx | int8 (auto: int8 for ptq/qat runs, onnx "
                                "for exported runs)"),
    token: str | None = typer.Option(None, envvar="MEDDX_SERVE_TOKEN",
                                     help="require 'Authorization: Bearer TOKEN' on /v1 and /metrics"),
    max_upload_mb: float = typer.Option(20.0, help="largest upload accepted (413 above)"),
    max_queue: int = typer.Option(64, help="prediction requests in progress at once (503 + Retry-After above)"),
    timeout: float = typer.Option(30.0, help="seconds per prediction request (504 after)"),
    batch: int = typer.Option(32, help="micro-batch size for classification (1: no micro-batching)"),
    batch_wait_ms: float = typer.Option(3.0, help="how long a micro-batch waits to fill"),
    device: str = typer.Option("cpu", help="device of the PyTorch runtime"),
    pacs_url: str | None = typer.Option(None, envvar="MEDDX_PACS_URL", help="DICOMweb root of a PACS: the page "
                                        "offers 'send to PACS' (de-identified SR / SEG / SC + images, STOW-RS)"),
    threads: int | None = typer.Option(None, help="PyTorch intra-op threads (default: PyTorch's; 1 suits a busy "
                                       "machine, where threads wait on each other)"),
) -> None:
    """Serve runs over HTTP: /v1/models, /v1/models/NAME/predict, /healthz, /readyz, /metrics, /docs and a web
    page at /."""
    from meddx.errors import MeddxError
    from meddx.runtimes import check_runtime
    from meddx.serve.app import create_app
    from meddx.serve.guard import Limits

    try:
        import uvicorn
    except ImportError:
        raise MeddxError("serving needs the serve extra: pip install 'meddx[serve]'") from None
    check_runtime(runtime)
    if threads:
        import torch

        torch.set_num_threads(threads)
    limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_queue=max_queue, timeout_s=timeout,
                    batching=batch > 1, max_batch=max(1, batch), max_wait_ms=batch_wait_ms)
    application = create_app(runs, runtime=runtime, token=token, limits=limits, device=device, pacs_url=pacs_url)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: binding {host}: reachable from other machines"
                   + ("" if token else " without a token (--token)"), err=True)
    typer.echo(f"serving {', '.join(application.state.served)} at http://{host}:{port}/ (API docs: /docs)")
    uvicorn.run(application, host=host, port=port, log_level="warning", server_header=False)
