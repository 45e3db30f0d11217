"""Report sections of segmentation runs: a per-class metric table and predicted-vs-true mask overlays.

Both are registered in ``meddx.engine.evaluate.REPORT_SECTIONS`` and return None for other tasks.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

N_OVERLAYS = 8
GLOSSARY = ("Dice = 2|P∩T| / (|P| + |T|); IoU = |P∩T| / |P∪T|; HD95 = 95th percentile of the symmetric "
            "surface distances (lower is better); surface Dice = share of both surfaces lying within the "
            "tolerance of the other surface. Means are over the test cases that hold the class; ‘global Dice’ "
            "pools all voxels of all cases, so false positives in cases without the class lower it.")


def _is_segmentation(context: dict[str, Any]) -> bool:
    return context.get("metrics", {}).get("task") == "segmentation" and "y_pred" in context


def _fmt(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and np.isfinite(v) else "—"


def _ci(ci: Any, nd: int = 3) -> str:
    if not ci or any(c is None or not np.isfinite(c) for c in ci):
        return ""
    return f" <span class='na'>({_fmt(ci[0], nd)}–{_fmt(ci[1], nd)})</span>"


def metrics_section(context: dict[str, Any]):
    """Table: Dice, IoU, HD95, surface Dice per class with 95% bootstrap CIs, global Dice, FP/missed cases."""
    if not _is_segmentation(context):
        return None
    from meddx.report.page import ReportSection

    m = context["metrics"]
    unit = escape(str(m.get("distance_unit", "voxel")))
    head = ("<tr><th>Class</th><th class='num'>Cases with class</th><th class='num'>Dice</th>"
            "<th class='num'>IoU</th>"
            f"<th class='num'>HD95 ({unit})</th><th class='num'>Surface Dice</th><th class='num'>Global Dice</th>"
            "<th class='num'>False-positive cases</th><th class='num'>Missed cases</th></tr>")
    rows = []
    for r in m.get("per_class", []):
        rows.append(
            f"<tr><td>{escape(str(r['name']))}</td><td class='num'>{r['cases_with_class']}</td>"
            f"<td class='num'>{_fmt(r['dice'])}{_ci(r.get('dice_ci'))}</td>"
            f"<td class='num'>{_fmt(r['iou'])}{_ci(r.get('iou_ci'))}</td>"
            f"<td class='num'>{_fmt(r['hd95'], 2)}{_ci(r.get('hd95_ci'), 2)}</td>"
            f"<td class='num'>{_fmt(r['surface_dice'])}{_ci(r.get('surface_dice_ci'))}</td>"
            f"<td class='num'>{_fmt(r['dice_global'])}</td><td class='num'>{r['false_positive_cases']}</td>"
            f"<td class='num'>{r['missed_cases']}</td></tr>")
    tol = m.get("surface_tolerance")
    note = (f"{escape(GLOSSARY)} Surface-Dice tolerance: {_fmt(tol, 2)} {unit}. Brackets: "
            f"{float(m.get('ci_level', 0.95)):.0%} percentile-bootstrap intervals over the {m.get('n')} test "
            f"cases ({m.get('n_bootstrap')} resamples).")
    html = (f"<p class='lead'>{escape(str(m.get('headline', '')))}</p><div class='table-wrap'><table class='metrics'>"
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div><p class='note'>{note}</p>")
    return ReportSection("Segmentation results", html)


def pick_cases(y_true: np.ndarray, y_pred: np.ndarray, k: int = N_OVERLAYS) -> list[int]:
    """Cases to show: the worst and best (by Dice) of those with foreground, plus false positives."""
    n = len(y_true)
    flat_t, flat_p = y_true.reshape(n, -1) > 0, y_pred.reshape(n, -1) > 0
    has_t = flat_t.any(1)
    inter = (flat_t & flat_p).sum(1)
    dice = np.where(has_t, 2 * inter / np.maximum(flat_t.sum(1) + flat_p.sum(1), 1), np.nan)
    pos = np.flatnonzero(has_t)
    order = pos[np.argsort(dice[pos])]
    chosen = list(order[: k // 2 - 1]) + list(order[-(k // 2 - 1):]) if len(order) > k - 2 else list(order)
    fps = np.flatnonzero(~has_t & flat_p.any(1))[:2]
    negs = np.flatnonzero(~has_t & ~flat_p.any(1))[:1]
    seen: list[int] = []
    for i in [*chosen, *fps, *negs]:
        if int(i) not in seen:
            seen.append(int(i))
    return seen[:k]


def overlay_png(images: list[np.ndarray], trues: list[np.ndarray], preds: list[np.ndarray],
                titles: list[str]) -> bytes:
    """A row of greyscale images with the reference outline (green) and the prediction outline (red)."""
    from meddx.report.plots import _figure, _png

    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig = _figure(2.6 * cols, 2.75 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, t, p, title in zip(axes, images, trues, preds, titles):
        ax.imshow(img, cmap="gray", interpolation="nearest")
        if t.any():
            ax.contour(t > 0, levels=[0.5], colors="#2ca02c", linewidths=1.2)
        if p.any():
            ax.contour(p > 0, levels=[0.5], colors="#d62728", linewidths=1.0, linestyles="--")
        ax.set_title(title, fontsize=8)
    return _png(fig)


def overlay_section(context: dict[str, Any]):
    """Overlays of predicted (red, dashed) vs reference (green) masks on a few test cases; the axial slice
    with the most reference (else predicted) foreground for volumes."""
    if not _is_segmentation(context):
        return None
    from meddx.report.page import ReportSection, img_tag

    y_true, y_pred, images = context["y_true"], context["y_pred"], context["images"]
    ids = context.get("ids") or [str(i) for i in range(len(y_true))]
    cases = pick_cases(y_true, y_pred)
    if not cases:
        return None
    imgs, ts, ps, titles = [], [], [], []
    for i in cases:
        img = images[i, 0].float().numpy()
        t, p = y_true[i], y_pred[i]
        if t.ndim == 3:
            area = (t > 0).sum((1, 2)) if t.any() else (p > 0).sum((1, 2))
            z = int(np.argmax(area))
            img, t, p = img[z], t[z], p[z]
            where = f" z={z}"
        else:
            where = ""
        inter, size = ((t > 0) & (p > 0)).sum(), (t > 0).sum() + (p > 0).sum()
        dice = f"Dice {2 * inter / size:.2f}" if (t > 0).any() else ("false positive" if (p > 0).any() else "empty")
        imgs.append(img)
        ts.append(t)
        ps.append(p)
        titles.append(f"{ids[i]}{where}\n{dice}")
    png = overlay_png(imgs, ts, ps, titles)
    html = ("<p class='note'>Green: reference mask outline; red dashed: predicted. Shown: the test cases with the "
            "lowest and highest Dice, then false positives in cases without the structure.</p>"
            f"<figure>{img_tag(png, 'segmentation overlays')}</figure>")
    return ReportSection("Predicted vs reference masks", html)
