"""The run folder: everything a run produced, in files a person can open.

    runs/<name>/config.json      resolved TrainConfig
    runs/<name>/data.json        data summary (source, classes, sizes)
    runs/<name>/history.jsonl    one JSON line per epoch
    runs/<name>/last.safetensors checkpoint after the latest epoch (resume point)
    runs/<name>/best.safetensors checkpoint with the best validation metric
    runs/<name>/metrics.json     test metrics (meddx evaluate)
    runs/<name>/report.html      self-contained report (meddx evaluate)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError
from meddx.utils.io import write_json_atomic, write_text_atomic


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, out: str | Path, name: str | None, prefix: str) -> RunDir:
        base = Path(out)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base / (name or f"{prefix}-{stamp}")
        k = 1
        while name is None and path.exists():
            k += 1
            path = base / f"{prefix}-{stamp}-{k}"
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if p.is_file() and p.suffix == ".safetensors":
            p = p.parent
        if not (p / "config.json").is_file():
            raise MeddxError("not a meddx run folder (no config.json)", p)
        return cls(p)

    config = property(lambda self: self.path / "config.json")
    data = property(lambda self: self.path / "data.json")
    history = property(lambda self: self.path / "history.jsonl")
    last = property(lambda self: self.path / "last.safetensors")
    best = property(lambda self: self.path / "best.safetensors")
    metrics = property(lambda self: self.path / "metrics.json")
    report = property(lambda self: self.path / "report.html")

    def write_json(self, path: Path, obj: Any) -> None:
        write_json_atomic(path, obj)

    def read_history(self) -> list[dict[str, Any]]:
        if not self.history.is_file():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line.strip()]

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite the whole history atomically (tiny file; keeps it consistent with ``last`` on resume)."""
        write_text_atomic(self.history, "".join(json.dumps(r) + "\n" for r in rows))

    def model_checkpoint(self) -> Path:
        """The checkpoint that evaluate/predict use: the run's ``select`` setting (``last`` by default)."""
        try:
            select = json.loads(self.config.read_text()).get("select", "last")
        except (OSError, json.JSONDecodeError):
            select = "last"
        return self.checkpoint(select)

    def checkpoint(self, which: str = "best") -> Path:
        p = self.best if which == "best" else self.last
        if not p.is_file():
            p = self.last if which == "best" else self.best
        if not p.is_file():
            raise MeddxError("run has no checkpoint yet (did training finish an epoch?)", self.path)
        return p
