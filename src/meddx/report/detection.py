"""Report section of detection runs: AP table and example images with boxes (2D); FROC plot and table (3D).

Registered in ``meddx.engine.evaluate.REPORT_SECTIONS``; returns None for other tasks.
"""

from __future__ import annotations

import io
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

N_EXAMPLES = 4
BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4"]


def detection_section(context: dict[str, Any]):
    m = context.get("metrics", {})
    if m.get("task") != "detection" or "detections" not in context:
        return None
    from meddx.report.page import ReportSection

    body = f"<p class='lead'>{escape(str(m.get('headline', '')))}</p>"
    body += _froc_html(m) if m.get("spatial_dims") == 3 else _map_html(m, context)
    return ReportSection("Detection results", body)


def _map_html(m: dict[str, Any], context: dict[str, Any]) -> str:
    from meddx.report.page import img_tag

    rows = "".join(f"<tr><td>{escape(k)}</td><td class='num'>{v:.3f}</td>"
                   f"<td class='num'>{m.get('ap_per_class', {}).get(k, float('nan')):.3f}</td></tr>"
                   for k, v in m.get("ap50_per_class", {}).items())
    table = (f"<div class='table-wrap'><table class='metrics'><thead><tr><th>Class</th><th class='num'>AP@0.5</th>"
             f"<th class='num'>AP@[.5:.95]</th></tr></thead><tbody>{rows}</tbody></table></div>"
             f"<p class='note'>COCO-style average precision (pycocotools, 101-point interpolation) over "
             f"{m.get('n_images')} images, {m.get('n_boxes')} boxes, {m.get('n_detections')} detections. "
             f"Examples below: reference boxes thin white, detections with score ≥ 0.3 coloured by class.</p>")
    images, dets, truth = context.get("images"), context["detections"], context.get("truth")
    if images is None or truth is None:
        return table
    pngs = [_example_png(images[i], truth[i], dets[i], context.get("data")) for i in range(min(N_EXAMPLES,
                                                                                              len(dets)))]
    return table + "<div>" + "".join(img_tag(p, f"test image {i} with boxes", 320) for i, p in enumerate(pngs)) + \
        "</div>"


def _rgb_image(image: Any):
    """A (C, H, W) uint8 tensor as an RGB PIL image (grey repeated)."""
    from PIL import Image

    arr = image.numpy()
    arr = np.repeat(arr, 3, 0) if arr.shape[0] == 1 else arr
    return Image.fromarray(np.moveaxis(arr.astype(np.uint8), 0, -1))


def _draw_detections(draw: Any, det: dict[str, np.ndarray], names: list[str] | None, scale: int = 1,
                     min_score: float | None = None) -> None:
    """Coloured boxes (and ``name score`` labels when ``names`` is given), skipping scores under ``min_score``."""
    for b, s, c in zip(det["boxes"], det["scores"], det["labels"]):
        if min_score is not None and s < min_score:
            continue
        colour = BOX_COLOURS[int(c) % len(BOX_COLOURS)]
        draw.rectangle([float(v) * scale for v in b], outline=colour, width=2)
        if names:
            draw.text((float(b[0]) * scale + 2, float(b[1]) * scale + 1), f"{names[int(c)]} {s:.2f}", fill=colour)


def _example_png(image: Any, truth: dict[str, np.ndarray], det: dict[str, np.ndarray], data: Any) -> bytes:
    from PIL import Image, ImageDraw

    im = _rgb_image(image)
    scale = max(1, 320 // max(im.size))
    im = im.resize((im.size[0] * scale, im.size[1] * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for b in truth["boxes"]:
        draw.rectangle([float(v) * scale for v in b], outline="white", width=1)
    _draw_detections(draw, det, data.class_names if data is not None else None, scale, min_score=0.3)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def draw_boxes_png(path: Path, image: Any, det: dict[str, np.ndarray], class_names: list[str]) -> Path:
    """Write ``image`` (C, H, W uint8) with labelled boxes as a PNG (atomically)."""
    from PIL import ImageDraw

    from meddx.utils.io import atomic_path

    im = _rgb_image(image)
    _draw_detections(ImageDraw.Draw(im), det, class_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
    return path


def _froc_html(m: dict[str, Any]) -> str:
    from meddx.report.page import img_tag

    sens = m["sensitivity"]
    head = "".join(f"<th class='num'>{fp:g}</th>" for fp in sens)
    cells = "".join(f"<td class='num'>{v:.3f}</td>" for v in sens.values())
    ci = m.get("cpm_ci")
    ci_text = f" (95% bootstrap CI {ci[0]:.3f}–{ci[1]:.3f})" if ci and all(np.isfinite(ci)) else ""
    table = (f"<div class='table-wrap'><table class='metrics'><thead><tr><th>FP per scan</th>{head}"
             f"<th class='num'>CPM</th></tr></thead><tbody><tr><td>Sensitivity</td>{cells}"
             f"<td class='num'>{m['cpm']:.3f}</td></tr></tbody></table></div>"
             f"<p class='note'>FROC as in LUNA16: a candidate hits a nodule when its centre lies within the "
             f"nodule's radius; extra hits on one nodule are ignored; CPM is the mean sensitivity at 1/8–8 false "
             f"positives per scan{escape(ci_text)}. {m['n_nodules']} nodules in {m['n_scans']} scans; "
             f"{m['n_detected']} found at some threshold.</p>")
    return img_tag(plot_froc(m), "FROC curve", 480) + table


def plot_froc(m: dict[str, Any]) -> bytes:
    """FROC curve (log2 FP/scan axis) with the seven LUNA16 operating points marked."""
    from meddx.report.plots import _figure, _png, _style

    fig = _figure(5.0, 3.4)
    ax = fig.add_subplot()
    fps, sens = np.asarray(m["fps"]), np.asarray(m["sens"])
    keep = fps > 0
    ax.plot(np.r_[fps[keep], 8 if not keep.any() or fps[keep].max() < 8 else []],
            np.r_[sens[keep], sens[-1] if not keep.any() or fps[keep].max() < 8 else []],
            color="#1f5f99", label="FROC (linear between operating points, as LUNA16)")
    pts = m["sensitivity"]
    ax.plot(list(pts), list(pts.values()), "o", color="#d62728", label=f"CPM {m['cpm']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 10, 10)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right", frameon=False)
    _style(ax)
    return _png(fig)
