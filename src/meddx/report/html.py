"""One self-contained HTML evaluation report: inline CSS, images as base64 data URIs, no scripts or links.

Every user-supplied string (titles, class names, run info) is escaped with ``html.escape``. Extra content
from other capabilities (saliency maps, segmentation overlays, ...) comes in as :class:`ReportSection`, whose
``html`` is trusted, already-rendered markup; build images for it with :func:`img_tag`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from meddx.report import plots
from meddx.utils.io import write_text_atomic

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


# --- small formatting helpers -------------------------------------------------------------------------------


def _val(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _num(x: Any, nd: int = 3) -> str:
    v = _val(x)
    return "—" if v is None else f"{v:.{nd}f}"


def _ci_text(ci: Any, level: float) -> str:
    if not ci or len(ci) != 2 or _val(ci[0]) is None or _val(ci[1]) is None:
        return ""
    return f"({level:.0%} CI {_num(ci[0])}–{_num(ci[1])})"


def _find(info: Mapping[str, Any], *keys: str) -> Any:
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


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


def _show(v: Any) -> str:
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


def _bar_cell(x: Any) -> str:
    v = _val(x)
    if v is None:
        return '<td class="num na">—</td>'
    pct = max(0.0, min(1.0, v)) * 100
    return (
        f'<td class="num" style="background:linear-gradient(90deg,#dcebf7 {pct:.1f}%,transparent '
        f'{pct:.1f}%)">'
        f"{v:.3f}</td>"
    )


# --- sections ----------------------------------------------------------------------------------------------


def _header(title: str, run_info: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    task = _find(run_info, "task") or metrics.get("task", "")
    date = _find(run_info, "date", "datetime", "timestamp", "created")
    date = date or datetime.now().strftime("%Y-%m-%d %H:%M")
    n = metrics.get("n") if metrics.get("n") is not None else _find(run_info, "n", "n_samples")
    split = _find(run_info, "split")
    items = [
        ("Dataset", _find(run_info, "dataset", "data_flag", "data")),
        ("Model", _find(run_info, "model", "arch", "architecture", "model_name")),
        ("Task", TASK_NAMES.get(str(task), task)),
        ("Date", date),
        ("Test images" if not split else f"Images ({split})", f"{int(n):,}" if _val(n) is not None else n),
    ]
    meta = "".join(
        f'<div class="meta-item"><span class="meta-k">{escape(k)}</span>'
        f'<span class="meta-v">{_show(v) if v not in (None, "") else "—"}</span></div>'
        for k, v in items
    )
    return f'<header><h1>{escape(title)}</h1><div class="meta">{meta}</div></header>'


def _headline(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    task = metrics.get("task", "")
    n = int(metrics.get("n") or 0)
    level = float(metrics.get("ci_level", 0.95))
    acc, auc = _val(metrics.get("acc")), _val(metrics.get("auc"))
    acc_line = f"ACC {_num(acc)} {_ci_text(metrics.get('acc_ci'), level)}".strip()
    auc_line = f"AUC {_num(auc)} {_ci_text(metrics.get('auc_ci'), level)}".strip()

    if acc is None:
        acc_text = "Accuracy could not be computed."
    elif task == MULTI_LABEL:
        acc_text = (
            f"Averaged over the {len(class_names)} findings, each finding was called correctly (present or "
            f"absent) for {acc:.1%} of the {n:,} test images."
        )
    else:
        thr = metrics.get("threshold", 0.5)
        at = f" at a probability threshold of {thr:g}" if task == BINARY else ""
        acc_text = (
            f"The model's prediction matched the true label for {round(acc * n):,} of {n:,} test images "
            f"({acc:.1%}){at}."
        )
    if auc is None:
        auc_text = "AUC could not be computed (the test set needs images with and without each class)."
    elif task == BINARY and class_names:
        pos = escape(str(class_names[-1]))
        auc_text = (
            f"Given one test image that is <em>{pos}</em> and one that is not, the model scores the "
            f"<em>{pos}</em> image higher {auc:.0%} of the time (0.5 = coin toss, 1.0 = perfect)."
        )
    elif task == MULTI_LABEL:
        auc_text = (
            "Averaged over findings, each present vs absent: how well the model ranks images with a finding "
            "above images without it, at any threshold (0.5 = coin toss, 1.0 = perfect)."
        )
    else:
        auc_text = (
            "Averaged over classes, each class against all others: how well the model ranks images of a "
            "class above the rest, at any threshold (0.5 = coin toss, 1.0 = perfect)."
        )
    ci_note = ""
    if metrics.get("acc_ci") or metrics.get("auc_ci"):
        ci_note = (
            f"The ranges in brackets are {level:.0%} confidence intervals from "
            f"{int(metrics.get('n_bootstrap') or 0):,} bootstrap resamples of the test set: a smaller or "
            "less varied test set gives a wider range."
        )
    else:
        ci_note = "No confidence intervals were computed for this run (bootstrap disabled)."
    undefined = metrics.get("auc_undefined_classes") or []
    if undefined:
        names = ", ".join(escape(str(u)) for u in undefined)
        ci_note += (
            f" AUC is undefined for {names} (the test set has no images with, or none without, that class); "
            "the AUC shown averages the remaining classes."
        )
    return (
        '<section id="summary"><h2>Summary</h2><div class="kpis">'
        '<div class="kpi"><div class="kpi-label">Accuracy</div>'
        f'<div class="kpi-value">{escape(acc_line)}</div><p>{acc_text}</p></div>'
        '<div class="kpi"><div class="kpi-label">Area under the ROC curve</div>'
        f'<div class="kpi-value">{escape(auc_line)}</div><p>{auc_text}</p></div>'
        f'</div><p class="note">{ci_note}</p></section>'
    )


def _per_class_table(metrics: Mapping[str, Any]) -> str:
    rows = metrics.get("per_class") or []
    if not rows:
        return ""
    multilabel = metrics.get("task") == MULTI_LABEL
    cols = [
        ("sensitivity", "Sensitivity"),
        ("specificity", "Specificity"),
        ("precision", "Precision (PPV)"),
        ("recall", "Recall"),
        ("f1", "F1"),
        ("auc", "AUC"),
    ]
    support = "Positives" if multilabel else "Support"
    head = (
        f"<tr><th>Class</th><th class='num'>{support}</th>"
        + "".join(f"<th class='num'>{escape(label)}</th>" for _, label in cols)
        + "</tr>"
    )
    body = []
    for r in rows:
        cells = "".join(_bar_cell(r.get(k)) for k, _ in cols)
        name, support_n = escape(str(r.get("name", ""))), int(r.get("support", 0))
        body.append(f"<tr><td>{name}</td><td class='num'>{support_n:,}</td>{cells}</tr>")
    macro = metrics.get("macro") or {}
    if macro:
        mac = {"sensitivity": macro.get("recall"), **macro}
        cells = "".join(
            f"<td class='num'>{_num(mac.get(k))}</td>"
            if k != "auc"
            else f"<td class='num'>{_num(metrics.get('auc'))}</td>"
            for k, _ in cols
        )
        total = sum(int(r.get("support", 0)) for r in rows)
        body.append(
            f"<tr class='macro'><td>Average over classes</td><td class='num'>{total:,}</td>{cells}</tr>"
        )
    thr = metrics.get("threshold", 0.5)
    names = [str(r.get("name", "")) for r in rows]
    if multilabel:
        rule = f"a finding counts as present when its probability is above {thr:g}"
    elif metrics.get("task") == BINARY and names:
        rule = f"an image is called <em>{escape(names[-1])}</em> when its probability is above {thr:g}"
    else:
        rule = "each image is assigned the class with the highest probability"
    return (
        '<section id="per-class"><h2>Per-class results</h2>'
        f"<p class='note'>Hard predictions: {rule}. Recall is the same as sensitivity. “—” marks a value "
        "that is undefined on this test set (for example, precision of a class the model never "
        "predicted).</p>"
        f"<div class='table-wrap'><table class='metrics'><thead>{head}</thead><tbody>{''.join(body)}</tbody>"
        "</table></div></section>"
    )


def _confusion_section(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    cm = metrics.get("confusion")
    if not cm:
        return ""
    if metrics.get("task") == MULTI_LABEL:
        rows = "".join(
            f"<tr><td>{escape(str(name))}</td>"
            + "".join(f"<td class='num'>{int(v):,}</td>" for v in (m[1][1], m[1][0], m[0][1], m[0][0]))
            + "</tr>"
            for name, m in zip(class_names, cm, strict=False)
        )
        return (
            '<section id="confusion"><h2>Confusion counts</h2>'
            "<p class='note'>For each finding: true positives (found), false negatives (missed), false "
            "positives (false alarms) and true negatives.</p><div class='table-wrap'><table "
            "class='metrics'><thead><tr><th>Finding</th><th class='num'>Found (TP)</th><th "
            "class='num'>Missed (FN)</th><th class='num'>False alarm (FP)</th><th class='num'>Correctly "
            f"negative (TN)</th></tr></thead><tbody>{rows}</tbody></table></div></section>"
        )
    png = plots.plot_confusion_matrix(cm, class_names)
    width = min(760, 300 + 45 * len(class_names))
    return (
        '<section id="confusion"><h2>Confusion matrix</h2>'
        "<p class='note'>Rows are the true class, columns the model's prediction. The diagonal holds "
        "correct predictions; each off-diagonal cell counts one kind of mistake. Shading and percentages "
        "are the share of each true class (each row sums to "
        f"100%).</p><figure>{img_tag(png, 'Confusion matrix', width)}</figure></section>"
    )


def _roc_section(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    roc = metrics.get("roc") or {}
    if not roc:
        return (
            '<section id="roc"><h2>ROC curves</h2><p class="note">No ROC curve could be drawn: the test set '
            "needs images both with and without a class.</p></section>"
        )
    extra = ""
    if metrics.get("task") == BINARY and class_names:
        extra = f" The curve is for the positive class, <em>{escape(str(class_names[-1]))}</em>."
    return (
        '<section id="roc"><h2>ROC curves</h2>'
        "<p class='note'>Each curve shows the trade-off between finding more true cases (up) and raising "
        "more false alarms (right) as the decision threshold moves. A curve hugging the top-left corner is "
        f"better; the dashed diagonal is guessing.{extra}</p>"
        f"<figure>{img_tag(plots.plot_roc_curves(roc), 'ROC curves', 560)}</figure></section>"
    )


_ECE_WORDS = [
    (0.03, "well calibrated"),
    (0.08, "reasonably well calibrated"),
    (0.15, "noticeably miscalibrated"),
    (float("inf"), "poorly calibrated"),
]


def calibration_sentence(metrics: Mapping[str, Any]) -> str:
    """One plain-language sentence about the ECE and the direction of miscalibration."""
    ece = _val(metrics.get("ece"))
    if ece is None:
        return "Calibration could not be computed."
    rel = metrics.get("reliability") or {}
    bins = [
        (c, a, k)
        for c, a, k in zip(
            rel.get("confidence", []), rel.get("accuracy", []), rel.get("count", []), strict=False
        )
        if c is not None and a is not None
    ]
    total = sum(k for _, _, k in bins)
    gap = sum(k * (c - a) for c, a, k in bins) / total if total else 0.0  # > 0: over-confident
    quality = next(q for limit, q in _ECE_WORDS if ece < limit)
    multilabel = rel.get("mode") == "positive-rate"
    direction = ""
    if abs(gap) >= 0.01 and ece >= 0.03:
        if multilabel:
            direction = f" and tends to {'over' if gap > 0 else 'under'}estimate how likely findings are"
        elif gap > 0:
            direction = (
                " and tends to be over-confident (it is right less often than its probabilities claim)"
            )
        else:
            direction = (
                " and tends to be under-confident (it is right more often than its probabilities claim)"
            )
    if multilabel:
        what = "predicted probabilities differ from the observed frequencies"
    else:
        what = "stated confidence differs from how often it is actually right"
    return (
        f"ECE {ece:.3f}: on average the model's {what} by about {ece * 100:.1f} percentage points, so it is "
        f"{quality}{direction}."
    )


def _calibration_section(metrics: Mapping[str, Any]) -> str:
    rel = metrics.get("reliability")
    fig = ""
    if rel and rel.get("count"):
        png = plots.plot_reliability(rel, _val(metrics.get("ece")))
        fig = f"<figure>{img_tag(png, 'Reliability diagram', 520)}</figure>"
    return (
        '<section id="calibration"><h2>Calibration</h2>'
        f"<p class='lead'>{escape(calibration_sentence(metrics))}</p><p class='note'>When a well-calibrated "
        "model says 80%, it is right about 80% of the time. Bars below the dashed line mean "
        "over-confidence; bars above it, under-confidence. The grey bars underneath show how many "
        f"predictions fall in each probability range.</p>{fig}</section>"
    )


def _history_section(history: Sequence[Mapping[str, Any]] | None) -> str:
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


_GLOSSARY = [
    (
        "Sensitivity (recall, true positive rate)",
        "Of the images that truly have the condition or class, the fraction the model found. High "
        "sensitivity means few missed cases.",
    ),
    (
        "Specificity (true negative rate)",
        "Of the images that do not have it, the fraction the model correctly left out. High specificity "
        "means few false alarms.",
    ),
    (
        "Precision (positive predictive value, PPV)",
        "Of the images the model flagged, the fraction that truly have it. It depends on how common the "
        "class is in this test set, so it can differ in your population.",
    ),
    ("F1", "One number balancing precision and sensitivity (their harmonic mean); 1 is perfect."),
    ("Support", "How many test images truly belong to the class (for multi-label: have the finding)."),
    (
        "Accuracy (ACC)",
        "The fraction of images labelled correctly. It can look high when one class dominates.",
    ),
    (
        "AUC",
        "Area under the ROC curve: the chance that the model scores a random image with the class above a "
        "random image without it. 0.5 is guessing, 1.0 is perfect; it does not depend on a threshold.",
    ),
    (
        "95% confidence interval (CI)",
        "The range the metric would plausibly fall in on another test set of the same size and kind, "
        "estimated by bootstrap resampling.",
    ),
    (
        "Calibration (ECE)",
        "Whether the model's probabilities can be taken at face value; ECE is the average gap between "
        "stated confidence and observed accuracy (0 is perfect).",
    ),
]


def _how_to_read() -> str:
    items = "".join(f"<dt>{escape(t)}</dt><dd>{escape(d)}</dd>" for t, d in _GLOSSARY)
    return (
        '<section id="how-to-read" class="glossary"><h2>How to read this report</h2>'
        f"<dl>{items}</dl><p class='note'>These numbers describe this test set only. Performance can differ "
        "on images from other hospitals, scanners or patient groups. This report is for research use and "
        "is not a basis for clinical decisions on its own.</p></section>"
    )


def _footer(run_info: Mapping[str, Any]) -> str:
    try:
        from importlib.metadata import version

        ver = version("meddx")
    except Exception:  # not installed (e.g. run from a source tree)
        ver = "dev"
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{_show(v)}</td></tr>" for k, v in _flatten(run_info))
    table = f"<div class='table-wrap'><table class='config'>{rows}</table></div>" if rows else ""
    made = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<footer id="run-info"><h2>Run information</h2>{table}'
        f"<p class='note'>Generated by meddx {escape(ver)} on {made}.</p></footer>"
    )


_CSS = """
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


def render_report(
    *,
    title: str,
    run_info: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] | None = None,
    sections: Sequence[ReportSection] = (),
    class_names: Sequence[str] | None = None,
) -> str:
    """The report as one HTML string. ``metrics`` is :func:`meddx.metrics.evaluate_classification`'s dict.

    ``class_names`` defaults to ``metrics["class_names"]``.
    """
    names = list(class_names if class_names is not None else metrics.get("class_names") or [])
    extra = "".join(f'<section class="extra"><h2>{escape(s.title)}</h2>{s.html}</section>' for s in sections)
    classification = "acc" in metrics or "auc" in metrics  # segmentation/detection bring their own sections
    body = "".join(
        [
            _header(title, run_info, metrics),
            _headline(metrics, names) if classification else "",
            _per_class_table(metrics) if classification else "",
            _confusion_section(metrics, names),
            _roc_section(metrics, names),
            _calibration_section(metrics),
            _history_section(history),
            extra,
            _how_to_read(),
            _footer(run_info),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """Render with :func:`render_report` (same keyword arguments) and write the file atomically."""
    return write_text_atomic(path, render_report(**kwargs))
