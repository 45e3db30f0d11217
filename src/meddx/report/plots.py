"""Report figures as PNG bytes: confusion matrix, ROC curves, reliability diagram, training curves.

Matplotlib is imported lazily and used through ``Figure`` + the Agg canvas directly (no pyplot), so nothing
touches the global backend or needs a display, and figures are freed when the function returns.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Any

DPI = 110
_BLUE = "#1f5f99"
_GREY = "#8a8f98"
_PALETTE = [
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
    "#393b79",
    "#ad494a",
    "#637939",
    "#843c39",
    "#7b4173",
    "#3182bd",
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    return buf.getvalue()


def _plain(text: Any) -> str:
    """Text for matplotlib labels: ``$`` would otherwise start mathtext."""
    return str(text).replace("$", r"\$")


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(True, color="#e6e8eb", linewidth=0.8)
    ax.set_axisbelow(True)


def png_to_base64(png: bytes) -> str:
    """Base64 text of PNG bytes (for data URIs)."""
    return base64.b64encode(png).decode("ascii")


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Heat map of a ``(C, C)`` confusion matrix (rows true, columns predicted) with counts in each cell.

    Colour is the row-normalised fraction, so a rare class's mistakes are as visible as a common one's.
    """
    import numpy as np

    m = np.asarray(cm, dtype=float)
    k = m.shape[0]
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(11.0, max(4.2, 0.62 * k + 2.2))
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fs = 11 if k <= 6 else 9 if k <= 10 else 7
    for i in range(k):
        for j in range(k):
            count = int(m[i, j])
            txt = f"{count}\n{frac[i, j]:.0%}" if rows[i, 0] > 0 and k <= 10 else f"{count}"
            ax.text(
                j,
                i,
                txt,
                ha="center",
                va="center",
                fontsize=fs,
                color="white" if frac[i, j] > 0.55 else "#1b1e23",
            )
    labels = [_plain(c) for c in class_names]
    ax.set_xticks(range(k), labels, rotation=40 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label("Fraction of the true class")
    return _png(fig)


_POINT_STYLE = {"0.5": ("o", "Default 0.5"), "youden": ("s", "Youden's J"), "sens90": ("^", "Sensitivity ≥ 90%")}


def plot_roc_curves(roc: dict[str, dict[str, Any]]) -> bytes:
    """One ROC curve per class (``{name: {"fpr", "tpr", "auc"}}``), AUC in the legend, chance diagonal.

    A curve's optional ``points`` (``[{"name", "threshold", "fpr", "tpr"}]``) are marked on it: the operating
    points of its decision thresholds."""
    fig = _figure(6.2, 5.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color=_GREY, linewidth=1, label="Chance (AUC 0.50)")
    for i, (name, curve) in enumerate(roc.items()):
        auc = curve.get("auc")
        label = f"{_plain(name)} (AUC {auc:.3f})" if auc is not None else _plain(name)
        ax.plot(curve["fpr"], curve["tpr"], color=_PALETTE[i % len(_PALETTE)], linewidth=1.8, label=label)
        for j, pt in enumerate(curve.get("points") or []):
            marker, name = _POINT_STYLE.get(pt["name"], ("o", pt["name"]))
            ax.plot([pt["fpr"]], [pt["tpr"]], linestyle="none", marker=marker, markersize=9,
                    markerfacecolor=_PALETTE[(j + 2) % len(_PALETTE)], markeredgecolor="#1b1e23", zorder=4,
                    label=f"{name} (threshold {pt['threshold']:.3g})")
    _style(ax)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize=8 if len(roc) > 6 else 9, frameon=False)
    return _png(fig)


def plot_reliability(reliability: dict[str, Any], ece: float | None = None) -> bytes:
    """Reliability diagram: observed accuracy per confidence bin against the diagonal, counts below."""
    edges = reliability["bin_edges"]
    conf, acc, count = reliability["confidence"], reliability["accuracy"], reliability["count"]
    positive_rate = reliability.get("mode") == "positive-rate"
    width = edges[1] - edges[0]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]

    fig = _figure(6.2, 6.0)
    ax, hx = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], linestyle="--", color=_GREY, linewidth=1, label="Perfect calibration")
    xs = [c for c, a in zip(centers, acc, strict=True) if a is not None]
    ys = [a for a in acc if a is not None]
    ax.bar(xs, ys, width=width * 0.92, color=_BLUE, alpha=0.85, label="Observed")
    gx = [c for c, a in zip(conf, acc, strict=True) if a is not None and c is not None]
    gy = [a for c, a in zip(conf, acc, strict=True) if a is not None and c is not None]
    ax.scatter(gx, gy, color="#d62728", s=14, zorder=3, label="Bin average (confidence, accuracy)")
    _style(ax)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Observed fraction positive" if positive_rate else "Observed accuracy")
    title = "Reliability diagram" + (f" (ECE {ece:.3f})" if ece is not None else "")
    ax.set_title(title, fontsize=11)
    ax.legend(loc="upper left", fontsize=9, frameon=False)

    hx.bar(centers, count, width=width * 0.92, color=_GREY)
    _style(hx)
    hx.set_ylabel("Count")
    hx.set_xlabel(
        "Predicted probability" if positive_rate else "Model confidence (probability of its prediction)"
    )
    return _png(fig)


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)  # numpy / torch scalars
        except (TypeError, ValueError):
            return None
    v = float(v)
    return v if math.isfinite(v) else None


_SKIP = {"epoch", "step", "iteration", "time", "seconds", "elapsed", "epoch_time"}


def plot_training_curves(history: Sequence[dict[str, Any]]) -> bytes | None:
    """Per-epoch curves from dicts like ``{"epoch", "train_loss", "val_loss", "val_auc", "val_acc", "lr"}``.

    Plots whichever numeric keys exist: losses together, other metrics together, learning rate (log scale)
    on its own. Returns None when there is nothing to plot.
    """
    if not history:
        return None
    from matplotlib.ticker import MaxNLocator

    xs = [_number(h.get("epoch")) for h in history]
    if any(x is None for x in xs):
        xs = [float(i + 1) for i in range(len(history))]
    keys: list[str] = []
    for h in history:
        for k, v in h.items():
            if k not in keys and k.lower() not in _SKIP and _number(v) is not None:
                keys.append(k)
    groups = {
        "Loss": [k for k in keys if "loss" in k.lower()],
        "Metric": [k for k in keys if "loss" not in k.lower() and not k.lower().startswith("lr")],
        "Learning rate": [k for k in keys if k.lower().startswith("lr")],
    }
    groups = {g: ks for g, ks in groups.items() if ks}
    if not groups:
        return None
    fig = _figure(6.2 * len(groups) if len(groups) < 3 else 15.0, 4.0)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (group, ks) in zip(axes, groups.items(), strict=True):
        for i, k in enumerate(ks):
            pts = [(x, _number(h.get(k))) for x, h in zip(xs, history, strict=True)]
            px = [x for x, y in pts if y is not None]
            py = [y for _, y in pts if y is not None]
            dashed = k.lower().startswith("train")
            ax.plot(
                px,
                py,
                marker="o" if len(px) <= 30 else None,
                markersize=3,
                linewidth=1.6,
                linestyle="--" if dashed else "-",
                color=_PALETTE[i % len(_PALETTE)],
                label=_plain(k),
            )
        _style(ax)
        if group == "Learning rate" and all(
            _number(h.get(k)) is None or _number(h.get(k)) > 0 for h in history for k in ks
        ):
            ax.set_yscale("log")
        ax.set_title(group, fontsize=11)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=9, frameon=False)
    return _png(fig)
