"""The classification evaluation report: one self-contained HTML page (inline CSS, images as base64 data URIs,
no scripts or links) with headline metrics, per-class table, confusion matrix, ROC curves, calibration,
training curves and a glossary. Segmentation and detection runs get the same page with their own sections
(:mod:`meddx.report.segmentation`, :mod:`meddx.report.detection`) instead of the classification ones.

Shared building blocks (layout, escaping, formatting, :class:`~meddx.report.page.ReportSection`) are in
:mod:`meddx.report.page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from meddx.kinds import BINARY, MULTI_LABEL
from meddx.report import plots
from meddx.report.operating import baseline_block, never_predicted_banner, thresholds_section
from meddx.report.page import (
    ReportSection,
    bar_cell,
    ci_text,
    footer,
    header,
    history_section,
    img_tag,
    num,
    page,
    val,
)
from meddx.utils.io import write_text_atomic


def _auc_text(metrics: Mapping[str, Any], auc: float | None, class_names: Sequence[str]) -> str:
    """What the AUC means for this task, in words."""
    task = metrics.get("kind", "")
    if auc is None:
        return "AUC could not be computed (the test set needs images with and without each class)."
    if task == BINARY and class_names:
        pos = escape(str(metrics.get("positive_name") or class_names[-1]))
        return (
            f"Given one test image that is <em>{pos}</em> and one that is not, the model scores the "
            f"<em>{pos}</em> image higher {auc:.0%} of the time (0.5 = coin toss, 1.0 = perfect)."
        )
    if task == MULTI_LABEL:
        return (
            "Averaged over findings, each present vs absent: how well the model ranks images with a finding "
            "above images without it, at any threshold (0.5 = coin toss, 1.0 = perfect)."
        )
    return (
        "Averaged over classes, each class against all others: how well the model ranks images of a "
        "class above the rest, at any threshold (0.5 = coin toss, 1.0 = perfect)."
    )


def _headline(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    level = float(metrics.get("ci_level", 0.95))
    acc, auc = val(metrics.get("acc")), val(metrics.get("auc"))
    acc_line = f"ACC {num(acc)} {ci_text(metrics.get('acc_ci'), level)}".strip()
    auc_line = f"AUC {num(auc)} {ci_text(metrics.get('auc_ci'), level)}".strip()
    acc_text = _acc_text(metrics, acc, class_names)
    auc_text = _auc_text(metrics, auc, class_names)
    return (
        '<section id="summary"><h2>Summary</h2><div class="kpis">'
        '<div class="kpi"><div class="kpi-label">Accuracy</div>'
        f'<div class="kpi-value">{escape(acc_line)}</div><p>{acc_text}</p></div>'
        '<div class="kpi"><div class="kpi-label">Area under the ROC curve</div>'
        f'<div class="kpi-value">{escape(auc_line)}</div><p>{auc_text}</p></div>'
        f'</div><p class="note">{_ci_note(metrics, level)}</p>{baseline_block(metrics)}</section>'
    )


def _acc_text(metrics: Mapping[str, Any], acc: float | None, class_names: Sequence[str]) -> str:
    """What the accuracy means for this kind of task, in words."""
    task, n = metrics.get("kind", ""), int(metrics.get("n") or 0)
    if acc is None:
        return "Accuracy could not be computed."
    if task == MULTI_LABEL:
        return (f"Averaged over the {len(class_names)} findings, each finding was called correctly (present or "
                f"absent) for {acc:.1%} of the {n:,} test images.")
    thr = metrics.get("threshold", 0.5)
    at = f" at a probability threshold of {thr:g}" if task == BINARY else ""
    return (f"The model's prediction matched the true label for {round(acc * n):,} of {n:,} test images "
            f"({acc:.1%}){at}.")


def _ci_note(metrics: Mapping[str, Any], level: float) -> str:
    """Where the confidence intervals come from, and which classes have no AUC."""
    if metrics.get("acc_ci") or metrics.get("auc_ci"):
        note = (f"The ranges in brackets are {level:.0%} confidence intervals from "
                f"{int(metrics.get('n_bootstrap') or 0):,} bootstrap resamples of the test set: a smaller or "
                "less varied test set gives a wider range.")
    else:
        note = "No confidence intervals were computed for this run (bootstrap disabled)."
    undefined = metrics.get("auc_undefined_classes") or []
    if undefined:
        names = ", ".join(escape(str(u)) for u in undefined)
        note += (f" AUC is undefined for {names} (the test set has no images with, or none without, that class); "
                 "the AUC shown averages the remaining classes.")
    return note


def _per_class_table(metrics: Mapping[str, Any]) -> str:
    rows = metrics.get("per_class") or []
    if not rows:
        return ""
    multilabel = metrics.get("kind") == MULTI_LABEL
    cols = [
        ("sensitivity", "Sensitivity"),
        ("specificity", "Specificity"),
        ("precision", "Precision (PPV)"),
        ("npv", "NPV"),
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
        cells = "".join(bar_cell(r.get(k)) for k, _ in cols)
        name, support_n = escape(str(r.get("name", ""))), int(r.get("support", 0))
        body.append(f"<tr><td>{name}</td><td class='num'>{support_n:,}</td>{cells}</tr>")
    macro = metrics.get("macro") or {}
    if macro:
        mac = {"sensitivity": macro.get("recall"), **macro}
        cells = "".join(
            f"<td class='num'>{num(mac.get(k))}</td>"
            if k != "auc"
            else f"<td class='num'>{num(metrics.get('auc'))}</td>"
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
    elif metrics.get("kind") == BINARY and names:
        rule = f"an image is called <em>{escape(names[-1])}</em> when its probability is above {thr:g}"
    else:
        rule = "each image is assigned the class with the highest probability"
    return (
        '<section id="per-class"><h2>Per-class results</h2>'
        f"<p class='note'>Hard predictions: {rule}. Sensitivity is also called recall. “—” marks a value "
        "that is undefined on this test set (for example, precision of a class the model never "
        "predicted).</p>"
        f"<div class='table-wrap'><table class='metrics'><thead>{head}</thead><tbody>{''.join(body)}</tbody>"
        "</table></div></section>"
    )


def _confusion_section(metrics: Mapping[str, Any], class_names: Sequence[str]) -> str:
    cm = metrics.get("confusion")
    if not cm:
        return ""
    if metrics.get("kind") == MULTI_LABEL:
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
    if metrics.get("kind") == BINARY and class_names:
        pos = escape(str(metrics.get("positive_name") or class_names[-1]))
        extra = f" The curve is for the positive class, <em>{pos}</em> (the finding)."
        if any(c.get("points") for c in roc.values()):
            extra += " Markers show where each decision threshold of the table above operates on these images."
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
    ece = val(metrics.get("ece"))
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
        png = plots.plot_reliability(rel, val(metrics.get("ece")))
        fig = f"<figure>{img_tag(png, 'Reliability diagram', 520)}</figure>"
    return (
        '<section id="calibration"><h2>Calibration</h2>'
        f"<p class='lead'>{escape(calibration_sentence(metrics))}</p><p class='note'>When a well-calibrated "
        "model says 80%, it is right about 80% of the time. Bars below the dashed line mean "
        "over-confidence; bars above it, under-confidence. The grey bars underneath show how many "
        f"predictions fall in each probability range.</p>{fig}</section>"
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
    (
        "Negative predictive value (NPV)",
        "Of the images the model did not flag, the fraction that truly do not have it. Like PPV it depends "
        "on how common the class is.",
    ),
    ("F1", "One number balancing precision and sensitivity (their harmonic mean); 1 is perfect."),
    (
        "Threshold, Youden's J",
        "The probability above which an image is flagged. Youden's J picks the threshold with the largest "
        "sensitivity + specificity − 1 on the validation split; thresholds are never tuned on the test set.",
    ),
    (
        "Baseline",
        "What a model that always gives the most common answer would score: a model must beat it to be useful.",
    ),
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
            header(title, run_info, metrics),
            never_predicted_banner(metrics),
            _headline(metrics, names) if classification else "",
            thresholds_section(metrics) if classification else "",
            _per_class_table(metrics) if classification else "",
            _confusion_section(metrics, names),
            _roc_section(metrics, names) if classification else "",
            _calibration_section(metrics) if classification else "",
            history_section(history),
            extra,
            _how_to_read() if classification else "",
            footer(run_info),
        ]
    )
    return page(title, body)


def write_report(path: str | Path, **kwargs: Any) -> Path:
    """Render with :func:`render_report` (same keyword arguments) and write the file atomically."""
    return write_text_atomic(path, render_report(**kwargs))
