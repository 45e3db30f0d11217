"""Shared HTML building blocks of the self-contained reports: page layout and CSS, header and footer,
escaped value formatting, table cells, embedded images and the :class:`ReportSection` that other
capabilities (saliency maps, segmentation overlays, detection examples, ...) add to a report.

Every user-supplied string (titles, class names, run info) is escaped with ``html.escape``; a
:class:`ReportSection`'s ``html`` is trusted, already-rendered markup; build images for it with :func:`img_tag`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import PurePath
from typing import Any

from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from meddx.report import plots

TASK_NAMES = {
    BINARY: "Binary classification",
    MULTI_CLASS: "Multi-class classification",
    MULTI_LABEL: "Multi-label classification",
    ORDINAL: "Ordinal grading (scored as classification)",
}


@dataclass
class ReportSection:
    """A titled block of already-rendered HTML (trusted: it is inserted as is)."""

    title: str
    html: str


def img_tag(png_bytes: bytes, alt: str, width: int | None = None) -> str:
    """An ``<img>`` embedding PNG bytes as a base64 data URI; ``width`` in CSS pixels (shrinks to fit)."""
    w = f' width="{int(width)}"' if width else ""
    src = f"data:image/png;base64,{plots.png_to_base64(png_bytes)}"
    return f'<img src="{src}" alt="{escape(alt)}"{w} class="fig">'


def val(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def num(x: Any, nd: int = 3) -> str:
    v = val(x)
    return "—" if v is None else f"{v:.{nd}f}"


def ci_text(ci: Any, level: float) -> str:
    if not ci or len(ci) != 2 or val(ci[0]) is None or val(ci[1]) is None:
        return ""
    return f"({level:.0%} CI {num(ci[0])}–{num(ci[1])})"


def find_info(info: Mapping[str, Any], *keys: str) -> Any:
    """First value under any of ``keys``, searching nested dicts breadth-first."""
    queue: list[Mapping[str, Any]] = [info]
    while queue:
        d = queue.pop(0)
        for k in keys:
            if k in d and d[k] not in (None, "", {}):
                v = d[k]
                if isinstance(v, Mapping):
                    v = v.get("name") or v.get("arch") or v.get("id") or json.dumps(v, default=str)
                return v
        queue.extend(v for v in d.values() if isinstance(v, Mapping))
    return None


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def show(v: Any) -> str:
    if isinstance(v, str):
        text = v
    elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) or x is None for x in v):
        text = ", ".join(str(x) for x in v)
    elif isinstance(v, float):
        text = f"{v:.6g}"
    else:
        text = json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
    if len(text) > 300:
        text = text[:297] + "…"
    return escape(text)


def bar_cell(x: Any) -> str:
    v = val(x)
    if v is None:
        return '<td class="num na">—</td>'
    pct = max(0.0, min(1.0, v)) * 100
    return (
        f'<td class="num" style="background:linear-gradient(90deg,#dcebf7 {pct:.1f}%,transparent '
        f'{pct:.1f}%)">'
        f"{v:.3f}</td>"
    )


def header(title: str, run_info: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    task = metrics.get("kind") or find_info(run_info, "kind") or find_info(run_info, "task") or metrics.get("task", "")
    date = find_info(run_info, "date", "datetime", "timestamp", "created")
    date = date or datetime.now().strftime("%Y-%m-%d %H:%M")
    n = metrics.get("n") if metrics.get("n") is not None else find_info(run_info, "n", "n_samples")
    split = find_info(run_info, "split")
    items = [
        ("Dataset", find_info(run_info, "dataset", "data_flag", "data")),
        ("Model", find_info(run_info, "model", "arch", "architecture", "model_name")),
        ("Task", TASK_NAMES.get(str(task), task)),
        ("Date", date),
        ("Test images" if not split else f"Images ({split})", f"{int(n):,}" if val(n) is not None else n),
    ]
    if metrics.get("positive_name") is not None:
        items.append(("Finding (positive class)", metrics["positive_name"]))
    if metrics.get("runtime"):
        files = ", ".join(PurePath(str(f)).name for f in metrics.get("runtime_files") or [])
        items.append(("Scored by", f"{metrics['runtime']}" + (f" · {files}" if files else "")))
    meta = "".join(
        f'<div class="meta-item"><span class="meta-k">{escape(k)}</span>'
        f'<span class="meta-v">{show(v) if v not in (None, "") else "—"}</span></div>'
        for k, v in items
    )
    return f'<header><h1>{escape(title)}</h1><div class="meta">{meta}</div></header>'


VERSIONED = ("torch", "torchvision", "monai", "timm", "numpy", "meddx")


def library_versions(names: Sequence[str] = VERSIONED) -> dict[str, str]:
    """Installed version of each distribution (``not installed`` where absent)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``2 h 05 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def run_facts(cfg: Any, model: Any, history: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """What a reader needs to reproduce a run: the learning rate actually used, the parameter count, the
    training time (sum of the epochs' ``seconds``) and library versions."""
    facts: dict[str, Any] = {}
    if cfg is not None and hasattr(cfg, "resolved_lr"):
        default = f" (default for {cfg.optimizer})" if cfg.lr is None else ""
        facts["learning rate"] = f"{cfg.resolved_lr():g}{default}"
    if model is not None and hasattr(model, "parameters"):
        facts["parameters"] = f"{sum(p.numel() for p in model.parameters()):,}"
    secs = [val(h.get("seconds")) for h in history or []]
    if any(v is not None for v in secs):
        n = len(history or [])
        facts["training time"] = f"{duration_text(sum(v for v in secs if v))} ({n} epoch{'s' if n != 1 else ''})"
    facts["versions"] = library_versions()
    return facts


def footer(run_info: Mapping[str, Any]) -> str:
    try:
        from importlib.metadata import version

        ver = version("meddx")
    except Exception:  # not installed (e.g. run from a source tree)
        ver = "dev"
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{show(v)}</td></tr>" for k, v in flatten(run_info))
    table = f"<div class='table-wrap'><table class='config'>{rows}</table></div>" if rows else ""
    made = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<footer id="run-info"><h2>Run information</h2>{table}'
        f"<p class='note'>Generated by meddx {escape(ver)} on {made}.</p></footer>"
    )


def history_section(history: Sequence[Mapping[str, Any]] | None) -> str:
    if not history:
        return ""
    png = plots.plot_training_curves(list(history))
    if png is None:
        return ""
    return (
        '<section id="training"><h2>Training curves</h2>'
        "<p class='note'>Loss and validation metrics per epoch. A validation loss that rises while the "
        "training loss keeps falling suggests over-fitting.</p>"
        f"<figure>{img_tag(png, 'Training curves', 900)}</figure></section>"
    )


CSS = """
:root{--fg:#1b1e23;--muted:#5b6270;--line:#e3e6ea;--bg:#f5f7fa;--accent:#1f5f99}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);font:15px/1.55 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",
Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:28px 28px 40px}
header{border-bottom:3px solid var(--accent);padding-bottom:14px;margin-bottom:8px}
h1{font-size:26px;margin:0 0 12px;font-weight:650}
h2{font-size:19px;margin:0 0 10px;color:var(--accent);font-weight:650}
section,footer{padding:18px 0;border-bottom:1px solid var(--line)}
footer{border-bottom:0}
.meta{display:flex;flex-wrap:wrap;gap:8px 28px}
.meta-item{display:flex;flex-direction:column}
.meta-k{font-size:11px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.meta-v{font-weight:600}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:16px}
.kpi{background:var(--bg);border:1px solid var(--line);border-left:5px solid var(--accent);border-radius:8px;
padding:14px 18px}
.kpi-label{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.kpi-value{font-size:24px;font-weight:700;margin:4px 0 6px;font-variant-numeric:tabular-nums}
.kpi p{margin:0;color:#333a44}
.note{color:var(--muted);font-size:13.5px;margin:6px 0 10px}
.lead{font-size:16px;font-weight:500;margin:4px 0 8px}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:var(--bg);font-size:12.5px;color:var(--muted);font-weight:600;
border-bottom:2px solid var(--line)}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.na{color:#a0a6b0}
tr.macro td{font-weight:600;background:var(--bg)}
.warn{background:#fff4e5;border:1px solid #f0b429;border-left:5px solid #d97706;border-radius:8px;
padding:12px 16px;margin:14px 0 4px;color:#5a3200}
table.config th{width:32%;font-weight:500;color:var(--muted);
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px}
table.config td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;
word-break:break-word}
figure{margin:8px 0 0;text-align:center}
img.fig{max-width:100%;height:auto}
.glossary dl{display:grid;grid-template-columns:minmax(180px,260px) 1fr;gap:6px 18px;margin:0 0 8px}
.glossary dt{font-weight:600}
.glossary dd{margin:0;color:#333a44}
.extra img{max-width:100%;height:auto}
@media print{main{padding:0}section,figure,table{break-inside:avoid}}
"""


def page(title: str, body: str) -> str:
    """A complete HTML document: ``title`` (escaped) and ``body`` (trusted markup) in the report's layout."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )
