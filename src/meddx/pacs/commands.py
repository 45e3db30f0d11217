"""``meddx pacs run`` and ``meddx pacs watch``: a typer sub-app over :mod:`meddx.pacs` (option parsing only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from meddx.utils.cli import user_errors

app = typer.Typer()
pacs_app = typer.Typer(help="Results back into the PACS over DICOMweb: de-identified DICOM SR / SEG / SC.",
                       no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")

URL_HELP = "DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web"


def _predictor(run: Path, device: str, runtime: str):
    from meddx.engine.predict import Predictor
    from meddx.runtimes import check_runtime

    check_runtime(runtime)
    return Predictor(run, device=device, runtime=runtime)


@pacs_app.command("run")
@user_errors
def run_study(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder or .safetensors checkpoint"),
    url: str = typer.Option(..., help=URL_HELP),
    study: str = typer.Option(..., help="Study Instance UID to process"),
    state: Path | None = typer.Option(None, help="state folder whose key makes the de-identified UIDs repeatable "
                                      "(default: a random key: a re-run stores a new de-identified study)"),
    heatmap: bool = typer.Option(True, help="classification: also store a heat-map Secondary Capture"),
    device: str = typer.Option("auto"),
    runtime: str = typer.Option("auto", help="auto | torch | onnx | int8"),
) -> None:
    """Find a study (QIDO-RS), retrieve it (WADO-RS), predict, and store SR / SEG / SC back (STOW-RS)."""
    from meddx.pacs.client import Pacs
    from meddx.pacs.roundtrip import process_study

    pacs = Pacs(url)
    key = None
    if state is not None:
        from meddx.pacs.state import State

        key = State(state).key
    outcome = process_study(_predictor(run, device, runtime), pacs, study, key=key, heatmap=heatmap)
    typer.echo(json.dumps(outcome.summary(), indent=2))


@pacs_app.command("watch")
@user_errors
def watch_pacs(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder or .safetensors checkpoint"),
    url: str = typer.Option(..., help=URL_HELP),
    state: Path = typer.Option(..., help="state folder: the de-identification key and the ledger of studies done"),
    interval: float = typer.Option(10.0, help="seconds between polls"),
    once: bool = typer.Option(False, help="one pass over the server's studies, then exit"),
    max_studies: int | None = typer.Option(None, help="stop after processing this many studies"),
    device: str = typer.Option("auto"),
    runtime: str = typer.Option("auto", help="auto | torch | onnx | int8"),
) -> None:
    """Poll the PACS for new studies and process each once (a restart resumes from the ledger)."""
    from meddx.pacs.client import Pacs
    from meddx.pacs.state import State
    from meddx.pacs.watch import watch

    pacs, ledger = Pacs(url), State(state)
    predictor = _predictor(run, device, runtime)
    done = watch(predictor, pacs, ledger, interval=interval, once=once, max_studies=max_studies,
                 log=lambda line: typer.echo(line))
    typer.echo(json.dumps({"processed": done}))
