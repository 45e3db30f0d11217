"""``meddx predict RUN --input DIR|GLOB|CSV --output results.parquet|csv``: a classifier over a whole archive.

Streaming with bounded memory: ``torch.utils.data.DataLoader`` worker processes read the files through the one
reader (:func:`meddx.data.contract.read_input`: the same conversions as ``meddx predict FILE``) and, when the
model runs on the CPU, also score them in batches, each with its own copy of the run's runtime (torch, onnx,
int8); with a GPU the main process runs the model (:mod:`meddx.engine.batch_read`). Each batch's rows are
appended to the output as it completes (:mod:`meddx.engine.batch_output`); a rerun skips files already
written, so an interrupted job continues where it stopped. A file that cannot be read becomes an error row.
Several processes (``--nproc``): :mod:`meddx.engine.batch_parallel`, built from :func:`open_job` and
:func:`score`.
"""

from __future__ import annotations

import csv
import glob
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.engine.batch_output import open_table
from meddx.engine.batch_read import plan_workers, scored_batches
from meddx.engine.distributed import cores
from meddx.errors import MeddxError


@dataclass
class BatchSummary:
    output: Path
    total: int  # inputs found
    skipped: int  # already in the output (a rerun)
    done: int  # rows written by this call
    errors: int  # of which error rows
    seconds: float

    def line(self) -> str:
        rate = self.done / max(self.seconds, 1e-9)
        return (f"{self.done} files predicted ({self.errors} unreadable, {self.skipped} already done) in "
                f"{self.seconds:.1f} s ({rate:.0f} files/s): {self.output}")


# ---------------------------------------------------------------- inputs


def find_inputs(spec: str | Path, volumes: bool = False) -> list[str]:
    """The files of a folder (recursively), a glob pattern or a CSV (column ``path`` or ``file``, else the
    first; relative paths from the CSV's folder), sorted. Models of 3D inputs take a DICOM series folder as
    one input; 2D models take each DICOM file of a folder as one."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return _walk(path, volumes)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv_paths(path)
    if glob.has_magic(text):
        found = sorted(glob.glob(text, recursive=True))
        files = [f for f in found if Path(f).is_file() or (volumes and Path(f).is_dir())]
        if not files:
            raise MeddxError(f"pattern {text!r} matches no files")
        return files
    raise MeddxError("input must be a folder, a glob pattern (quote it) or a .csv list of files", text)


def _walk(root: Path, volumes: bool) -> list[str]:
    from meddx.data.folder import _is_image_file  # one definition of "an image file" (suffix or DICM marker)

    out: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        if volumes:
            from meddx.data.volumes import VOLUME_SUFFIXES, _dicom_files

            if _dicom_files(here):  # a DICOM series: one input
                out.append(str(here))
                continue
            out += [str(here / f) for f in sorted(files) if f.lower().endswith(VOLUME_SUFFIXES + (".npy",))]
        else:
            out += [str(here / f) for f in sorted(files)
                    if f.lower().endswith((".npy", ".npz")) or _is_image_file(here / f)]
    if not out:
        raise MeddxError("no image files (PNG/JPEG/TIFF/BMP, DICOM, .npy) in the folder", root)
    return out


def _csv_paths(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MeddxError(f"not a readable CSV ({exc})", path) from None
    if not rows:
        raise MeddxError("empty CSV", path)
    header = [h.strip().lower() for h in rows[0]]
    col = next((header.index(n) for n in ("path", "file") if n in header), None)
    body = rows[1:] if col is not None else rows
    col = col or 0
    return [str(p if (p := Path(r[col])).is_absolute() else path.parent / p) for r in body if len(r) > col and r[col]]


# ---------------------------------------------------------------- the job


def predict_archive(run: str | Path, inputs: str | Path, output: str | Path, *, runtime: str = "auto",
                    device: str = "auto", batch_size: int = 256, workers: int | None = None,
                    progress: bool = True) -> BatchSummary:
    """Predict every input file not yet in ``output``; rows appended per batch. See the module docstring."""
    import time

    scoring = workers_score(runtime, run, device)
    # workers x model threads <= cores: oversubscribed cores cost ~4x on a busy 2-core machine (measured)
    n_workers, model_threads = plan_workers(workers, scoring, cores())
    job = open_job(run, inputs, output, runtime, device, threads=model_threads, scoring=scoring)
    t0 = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(model_threads)
    said: set[str] = set()
    with _bar(len(job.pending), progress) as advance, _restore_threads(threads):
        def on_batch(rows: int, errors: int, notices: list[str]) -> None:
            _print_notices(notices, said)
            advance(rows)

        written, errors = score(job, job.table, job.pending, batch_size, n_workers, on_batch)
    out = job.table.close()
    return job.summary(out, written, errors, time.time() - t0)


def workers_score(runtime: str, run: str | Path, device: str) -> bool:
    """Whether the reading workers also run the model (:mod:`meddx.engine.batch_read`): for a model of 2D images
    on the CPU (ONNX Runtime, or PyTorch without a GPU). A 3D model's activations are too large to hold once
    per core, and a GPU belongs to the main process."""
    from meddx.runtimes import resolve, source_meta
    from meddx.utils.runtime import pick_device

    if resolve(runtime, run) == "torch" and pick_device(device).type != "cpu":
        return False
    return len(source_meta(run).get("image_shape", [])) != 3


@dataclass
class Job:
    """An open batch job: the runtime, the task, the output table and the files not in it yet."""

    rt: Any
    task: Any
    classes: list[str]
    table: Any
    paths: list[str]
    pending: list[str]
    run: str = ""  # what the runtime was opened on: scoring workers open their own copy of it
    scoring: bool = False  # reading workers also score (batch_read.plan_workers)

    def summary(self, out: Path, written: int, errors: int, seconds: float) -> BatchSummary:
        return BatchSummary(out, len(self.paths), len(self.paths) - len(self.pending), written, errors, seconds)


def open_job(run: str | Path, inputs: str | Path, output: str | Path, runtime: str, device: str,
             threads: int | None = None, scoring: bool = False) -> Job:
    """Open the runtime (a classifier's, else a one-line error; ``threads``: ONNX Runtime's intra-op threads),
    the output table, and list the pending files (those in neither the output nor a rank table a killed
    ``--nproc`` run left)."""
    from meddx.runtimes import open_runtime
    from meddx.tasks import task_from_meta

    rt = open_runtime(runtime, run, device=device, threads=threads)
    task = task_from_meta(rt.meta)
    if not task.is_classifier:
        raise MeddxError(f"--input/--output predicts classification runs; this is a {task.name} run (use "
                         "meddx predict RUN FILE...)", run)
    classes = list(rt.meta["classes"])
    table = open_table(output, classes)
    paths = find_inputs(inputs, len(rt.meta.get("image_shape", [])) == 3)
    done = table.done()
    return Job(rt, task, classes, table, paths, [p for p in paths if p not in done], str(run), scoring)


def score(job: Job, table: Any, paths: list[str], batch_size: int, n_workers: int,
          on_batch: Callable[[int, int, list[str]], None]) -> tuple[int, int]:
    """Score ``paths`` with ``job``'s runtime into ``table`` batch by batch, read (and on the CPU also scored) by
    ``n_workers`` processes (:mod:`meddx.engine.batch_read`); ``on_batch(rows, errors, notices)`` after each.
    Returns (rows written, error rows)."""
    written = errors = 0
    for probs, names, errs, notices in scored_batches(paths, job.rt.meta, batch_size, n_workers, rt=job.rt,
                                                      run=job.run, scoring=job.scoring):
        rows = _rows(job.task, probs, names, errs, job.classes)
        table.append(rows)
        bad = sum(1 for e in errs if e)
        written, errors = written + len(rows), errors + bad
        on_batch(len(rows), bad, notices)
    return written, errors


@contextmanager
def _restore_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rows(task: Any, probabilities: np.ndarray, names: list[str], errs: list[str],
          classes: list[str]) -> list[dict[str, Any]]:
    probs = iter(probabilities)
    rows = []
    for name, err in zip(names, errs):
        if err:
            rows.append({"file": name, "status": "error", "error": err})
            continue
        described = task.describe(name, next(probs), classes)
        label = described.get("label") or ";".join(described.get("labels", []))
        rows.append({"file": name, "status": "ok", "label": label, "probability": described.get("probability"),
                     "error": "", **{f"p_{c}": v for c, v in described["probabilities"].items()}})
    return rows


def _print_notices(notices: list[str], said: set[str]) -> None:
    for n in notices:
        kind, text = n.split("\t", 1)
        if kind not in said:
            said.add(kind)
            print(f"notice: {text} (said once; other files may have the same)", file=sys.stderr)


class _bar:
    """A rich progress bar (files, rate, ETA) on stderr; silent when ``enabled`` is False."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.progress.__enter__()
        task = self.progress.add_task("files", total=self.total, rate="")

        def advance(n: int) -> None:
            speed = self.progress.tasks[0].speed
            self.progress.update(task, advance=n, rate=f"{speed:.0f} files/s" if speed else "")

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
