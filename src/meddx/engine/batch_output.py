"""The result table of ``meddx predict --output``: one row per input file, appended as batches complete, and
read back on a rerun so that finished files are skipped (every file exactly once, even after a kill -9).

CSV: rows are appended and flushed per batch; a rerun first cuts a half-written last line (a kill mid-write).
Parquet (pyarrow, the ``batch`` extra): a parquet file is only readable once its footer is written, so each
batch goes to an atomically written part file in ``<output>.parts/``; the finished run merges the parts into
``<output>`` (row groups streamed, never all rows in memory) and removes the folder.

Several processes (``--nproc``, :mod:`meddx.engine.batch_parallel`): rank ``k`` writes its own table
(``open_table(path, classes, rank=k)``): the CSV sidecar ``<output>.rank<k>.csv``, or parquet parts named
``rank<k>-part-*.parquet`` in the same parts folder. The main table counts every rank's rows as done and its
``close`` merges them into ``<output>``, skipping files already there, so a kill at any point (even between the
merge and the removal of a sidecar) and a rerun with any ``--nproc`` end with every file exactly once.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError
from meddx.utils.io import atomic_path

FIXED = ["file", "status", "label", "probability", "error"]


def columns(classes: list[str]) -> list[str]:
    return FIXED + [f"p_{c}" for c in classes]


def open_table(path: str | Path, classes: list[str], rank: int | None = None) -> CsvTable | ParquetTable:
    """The output table, or with ``rank`` the table that worker process writes (merged by the main one)."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return CsvTable(path, columns(classes), rank)
    if path.suffix.lower() in (".parquet", ".pq"):
        return ParquetTable(path, columns(classes), rank)
    raise MeddxError("output must end in .csv or .parquet", path)


def rank_csv(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.rank{rank:03d}.csv")


def _rank_csvs(path: Path) -> list[Path]:
    """Leftover and current rank sidecars of ``path``, by rank."""
    pattern = re.compile(re.escape(path.name) + r"\.rank(\d+)\.csv")
    if not path.parent.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in path.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


class CsvTable:
    def __init__(self, path: Path, cols: list[str], rank: int | None = None) -> None:
        self.cols, self.rank = cols, rank
        self.path = path if rank is None else rank_csv(path, rank)
        self.handle: Any = None

    def done(self) -> set[str]:
        """Files already in the table, and for the main table in every rank sidecar (a partial last line from a
        kill is cut off first, so appending continues after a full line)."""
        found = self._own_done()
        if self.rank is None:
            for side in _rank_csvs(self.path):
                found |= CsvTable(side, self.cols)._own_done()
        return found

    def _own_done(self) -> set[str]:
        if not self.path.is_file():
            return set()
        _cut_partial_line(self.path)
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return set()
            if header != self.cols:
                raise MeddxError(f"exists with other columns ({', '.join(header[:6])}...); it belongs to another "
                                 "run or model: choose a new --output", self.path)
            return {row[0] for row in reader if row}

    def append(self, rows: list[dict[str, Any]]) -> None:
        if self.handle is None:
            fresh = not self.path.is_file() or self.path.stat().st_size == 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a", newline="", encoding="utf-8")
            if fresh:
                self.handle.write(_csv_line(self.cols))
        # one write per batch: a kill leaves at most one partial line, which the next run cuts
        self.handle.write("".join(_csv_line([_cell(r.get(c)) for c in self.cols]) for r in rows))
        self.handle.flush()

    def close(self) -> Path:
        """Close; the main table then merges the rank sidecars into the output and removes them."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.rank is None:
            for side in _rank_csvs(self.path):
                self._merge(side)
        return self.path

    def _merge(self, side: Path) -> None:
        """Append the sidecar's rows whose file is not in the output yet (streamed), then remove it. A kill
        mid-append leaves a cut last line (cut by the next ``done``) and the sidecar, merged again then."""
        CsvTable(side, self.cols)._own_done()  # header check; cuts a row a killed worker left half-written
        if not self.path.is_file() or self.path.stat().st_size == 0:
            os.replace(side, self.path)  # nothing to deduplicate against: an atomic rename, no copy
            return
        seen = self._own_done()
        with open(side, newline="", encoding="utf-8") as src, \
                open(self.path, "a", newline="", encoding="utf-8") as dst:
            reader = csv.reader(src)
            next(reader, None)
            chunk: list[str] = []
            for row in reader:
                if row and row[0] not in seen:
                    seen.add(row[0])
                    chunk.append(_csv_line(row))
                if len(chunk) >= 4096:
                    dst.write("".join(chunk))
                    chunk = []
            dst.write("".join(chunk))
            dst.flush()
            os.fsync(dst.fileno())  # the rows are on disk before the sidecar that also holds them goes
        side.unlink()


class ParquetTable:
    def __init__(self, path: Path, cols: list[str], rank: int | None = None) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise MeddxError("parquet output needs pyarrow (pip install 'meddx[batch]'), or use a .csv output",
                             path) from None
        self.path, self.cols, self.rank = path, cols, rank
        self.parts = path.with_name(path.name + ".parts")
        self.prefix = "" if rank is None else f"rank{rank:03d}-"
        self.count = len(list(self.parts.glob(f"{self.prefix}part-*.parquet"))) if self.parts.is_dir() else 0

    def schema(self):
        import pyarrow as pa

        text = {"file", "status", "label", "error"}
        return pa.schema([(c, pa.string() if c in text else pa.float64()) for c in self.cols])

    def done(self) -> set[str]:
        import pyarrow.parquet as pq

        found: set[str] = set()
        sources = ([self.path] if self.path.is_file() else []) + self._part_files()
        for src in sources:
            table = pq.read_table(src, columns=["file"])
            if table.num_rows and pq.read_schema(src).names != self.cols:
                raise MeddxError("exists with other columns; it belongs to another run or model: choose a new "
                                 "--output", src)
            found.update(table.column("file").to_pylist())
        return found

    def append(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        table = pa.Table.from_pylist([{c: r.get(c) for c in self.cols} for r in rows], schema=self.schema())
        self.parts.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.parts / f"{self.prefix}part-{self.count:08d}.parquet") as tmp:
            pq.write_table(table, tmp)
        self.count += 1

    def close(self) -> Path:
        """Merge an earlier finished table and the parts of every rank into the output file (row group by row
        group; a part's rows whose file is already in the output, from a kill between the merge and the removal
        of the parts, are skipped). A rank's table only writes parts: the main table merges them."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sources = ([self.path] if self.path.is_file() else []) + self._part_files()
        if self.rank is not None or not sources or sources == [self.path]:
            return self.path
        seen: set[str] = set()
        with atomic_path(self.path) as tmp:
            with pq.ParquetWriter(tmp, self.schema()) as writer:
                for src in sources:
                    for i in range((f := pq.ParquetFile(src)).num_row_groups):
                        group = f.read_row_group(i)
                        names = group.column("file").to_pylist()
                        keep = [n not in seen for n in names]
                        seen.update(names)
                        writer.write_table(group if all(keep) else group.filter(pa.array(keep)))
        import shutil

        shutil.rmtree(self.parts)  # the merged parts, and any temporary a kill left mid-write
        return self.path

    def _part_files(self) -> list[Path]:
        """Every rank's parts (``part-*`` of one process, ``rank<k>-part-*`` of --nproc workers)."""
        return sorted(self.parts.glob("*part-*.parquet")) if self.parts.is_dir() else []


def _cut_partial_line(path: Path) -> None:
    """Truncate ``path`` after its last newline (the rest is a row cut short by a kill)."""
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        keep, step = size, 1 << 16
        while keep > 0:
            start = max(0, keep - step)
            f.seek(start)
            chunk = f.read(keep - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            keep = start
        if keep != size:
            f.truncate(keep)


def _csv_line(values: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value
