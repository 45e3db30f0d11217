"""Pictures of explanations: overlay PNGs (image | heat map | blend), volume strips, a gallery page.

Matplotlib is used through ``Figure`` + Agg (no pyplot, no global state), like ``meddx.report.plots``.
The blend shows the heat map with a per-pixel opacity that grows with the map, so regions the map does
not point at keep the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np

CMAP = "jet"


def display_image(image: Any) -> np.ndarray:
    """A raw (C, *spatial) image as (*spatial) grey or (*spatial, 3) RGB floats in [0, 1] for showing."""
    a = np.asarray(image.cpu() if hasattr(image, "cpu") else image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    else:
        a = a.astype(np.float32)
        lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0.0, 1.0)
        a = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
    if a.shape[0] == 3:
        return np.moveaxis(a, 0, -1)
    return a[0]


def map_stats(heatmap: Any) -> dict[str, Any]:
    """Numbers describing one map: range, mean, spread, peak position and the share of area above 0.5."""
    h = np.asarray(heatmap, dtype=np.float64)
    peak = np.unravel_index(int(np.argmax(h)), h.shape)
    total = float(h.sum())
    top = np.sort(h.ravel())[::-1][: max(1, h.size // 10)]
    return {
        "shape": list(h.shape), "min": float(h.min()), "max": float(h.max()), "mean": float(h.mean()),
        "std": float(h.std()), "peak": [int(i) for i in peak], "peak_value": float(h[peak]),
        "area_above_half": float((h >= 0.5).mean()),
        "mass_in_top_10pct": float(top.sum() / total) if total > 0 else None,
    }


def _show_image(ax: Any, img: np.ndarray) -> None:
    ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _show_blend(ax: Any, img: np.ndarray, heat: np.ndarray, alpha: float = 0.7) -> Any:
    _show_image(ax, img)
    return ax.imshow(heat, cmap=CMAP, vmin=0, vmax=1, alpha=np.clip(heat, 0, 1) * alpha, interpolation="bilinear")


def overlay_png(image: Any, heatmap: Any, title: str, panel: float = 2.4) -> bytes:
    """Three panels for a 2D image: the image, the heat map (with a colour bar) and their blend."""
    from meddx.report.plots import _figure, _plain, _png

    img, heat = display_image(image), np.asarray(heatmap, dtype=np.float32)
    fig = _figure(3 * panel + 0.6, panel + 0.55)
    axes = fig.subplots(1, 3)
    _show_image(axes[0], img)
    axes[0].set_title("image", fontsize=9)
    im = axes[1].imshow(heat, cmap=CMAP, vmin=0, vmax=1, interpolation="bilinear")
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title("heat map", fontsize=9)
    _show_blend(axes[2], img, heat)
    axes[2].set_title("blend", fontsize=9)
    fig.colorbar(im, ax=axes.tolist(), fraction=0.025, pad=0.01)
    fig.suptitle(_plain(title), fontsize=10)
    return _png(fig)


def row_png(images: Sequence[Any], heatmaps: Sequence[Any], captions: Sequence[str], side: float = 1.6) -> bytes:
    """A row of small blended panels with captions (report sections); volumes show the peak's slice."""
    from meddx.report.plots import _figure, _plain, _png

    n = len(images)
    fig = _figure(side * n + 0.2, side + 0.45)
    axes = np.atleast_1d(np.asarray(fig.subplots(1, n, squeeze=False))).ravel()
    for ax, image, heatmap, caption in zip(axes, images, heatmaps, captions):
        img, heat = display_image(image), np.asarray(heatmap, dtype=np.float32)
        if heat.ndim == 3:
            z = int(np.unravel_index(int(np.argmax(heat)), heat.shape)[0])
            img, heat = img[z], heat[z]
        _show_blend(ax, img, heat)
        ax.set_title(_plain(caption), fontsize=7)
    return _png(fig)


def strip_slices(depth: int, peak_z: int, n: int = 5) -> list[int]:
    """Up to ``n`` axial slice indices centred on ``peak_z``, spaced about depth/12 apart."""
    step = max(1, depth // 12)
    n = min(n, depth)
    while step > 1 and (n - 1) * step > depth - 1:
        step -= 1
    start = min(max(0, peak_z - (n // 2) * step), depth - 1 - (n - 1) * step)
    return [start + k * step for k in range(n)]


def volume_strip_png(volume: Any, heatmap: Any, title: str, n_slices: int = 5, panel: float = 1.8) -> bytes:
    """Axial slices through the map's peak: the image on top, the blend below (peak marked with a cross)."""
    from meddx.report.plots import _figure, _plain, _png

    vol, heat = display_image(volume), np.asarray(heatmap, dtype=np.float32)
    if vol.ndim == 4:  # (D, H, W, 3) RGB volume: show as grey
        vol = vol.mean(-1)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    zs = strip_slices(heat.shape[0], int(peak[0]), n_slices)
    fig = _figure(panel * len(zs) + 0.6, 2 * panel + 0.6)
    axes = np.asarray(fig.subplots(2, len(zs), squeeze=False))
    im = None
    for j, z in enumerate(zs):
        _show_image(axes[0, j], vol[z])
        axes[0, j].set_title(f"z={z}" + (" (peak)" if z == peak[0] else ""), fontsize=8)
        im = _show_blend(axes[1, j], vol[z], heat[z])
        if z == peak[0]:
            axes[1, j].plot([peak[2]], [peak[1]], marker="+", color="white", markersize=10, mew=1.5)
    fig.colorbar(im, ax=axes[1].tolist(), fraction=0.025, pad=0.01)
    fig.suptitle(_plain(title), fontsize=10)
    return _png(fig)


_GALLERY_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1e23;background:#fafbfc}
h1{font-size:20px;margin:0 0 4px}.note{color:#5b616b;font-size:13px;margin:0 0 16px}
.grid{display:flex;flex-wrap:wrap;gap:14px}.card{background:#fff;border:1px solid #e1e4e8;border-radius:6px;
padding:8px;max-width:100%}.card img{max-width:100%;height:auto;display:block}
.cap{font-size:12px;color:#3b4048;margin-top:4px;word-break:break-all}
"""


def gallery_html(items: Sequence[dict[str, Any]], title: str, note: str = "") -> str:
    """A self-contained HTML page of explanation cards; each item has ``png`` (bytes) and ``caption``."""
    from meddx.report.page import img_tag

    cards = "".join(
        f'<div class="card">{img_tag(it["png"], it.get("caption", ""))}'
        f'<div class="cap">{escape(str(it.get("caption", "")))}</div></div>' for it in items)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{_GALLERY_CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"<p class='note'>{escape(note)}</p><div class='grid'>{cards}</div></body></html>\n")
