"""Report sections of registration runs: the metric table (learned beside identity, bootstrap CIs) and example
pairs (fixed / moving / warped, checkerboard, deformation grid, Jacobian determinant map).

Volumes are shown by their middle axial slice (the in-plane field components).
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

N_EXAMPLES = 3
METRICS = (("dice", "Dice", 3), ("hd95", "HD95", 2), ("tre_mm", "TRE (mm)", 2), ("folding_pct", "folding %", 3),
           ("sdlogj", "SD log det J", 3), ("seconds_per_pair", "s / pair", 3))


def _fmt(v: Any, nd: int) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and np.isfinite(v) else "—"


def _ci(ci: Any, nd: int) -> str:
    if not ci or any(c is None or not np.isfinite(c) for c in ci):
        return ""
    return f" <span class='na'>({_fmt(ci[0], nd)}–{_fmt(ci[1], nd)})</span>"


def metric_table(rows: dict[str, dict[str, Any]]) -> str:
    """HTML table: one row per method (``{method: summary}``), columns Dice ... s/pair with CIs."""
    head = "<tr><th>Method</th>" + "".join(f"<th class='num'>{t}</th>" for _, t, _ in METRICS) + "</tr>"
    body = []
    for name, m in rows.items():
        cells = "".join(f"<td class='num'>{_fmt(m.get(k), nd)}{_ci(m.get(f'{k}_ci'), nd)}</td>" for k, _, nd in METRICS)
        body.append(f"<tr><td>{escape(name)}</td>{cells}</tr>")
    return (f"<div class='table-wrap'><table class='metrics'><thead>{head}</thead><tbody>{''.join(body)}"
            "</tbody></table></div>")


def structure_table(m: dict[str, Any]) -> str:
    head = ("<tr><th>Structure</th><th class='num'>Pairs</th><th class='num'>Dice</th>"
            "<th class='num'>HD95</th></tr>")
    body = [f"<tr><td>{escape(str(r['name']))}</td><td class='num'>{r['pairs_with_structure']}</td>"
            f"<td class='num'>{_fmt(r['dice'], 3)}{_ci(r.get('dice_ci'), 3)}</td>"
            f"<td class='num'>{_fmt(r['hd95'], 2)}{_ci(r.get('hd95_ci'), 2)}</td></tr>" for r in m["per_structure"]]
    return (f"<div class='table-wrap'><table class='metrics'><thead>{head}</thead><tbody>{''.join(body)}"
            "</tbody></table></div>")


def registration_sections(context: dict[str, Any]) -> list[Any]:
    """The metric section and the example figure section (None parts left out)."""
    from meddx.report.page import ReportSection

    m = context["registration"]
    steps = m.get("refine_steps")
    rows = {f"learned (network + {steps} refinement steps)" if steps else "learned": m}
    if m.get("network_only"):
        rows["network alone (no refinement)"] = m["network_only"]
    rows["identity (no registration)"] = m.get("identity") or {}
    note = ("Dice/HD95 of the warped moving labels against the fixed labels (mean over the structures a pair holds, "
            "then over pairs); TRE: distance between each moving landmark and where the field maps its fixed "
            f"partner; folding: % voxels with det J ≤ 0. Brackets: 95% bootstrap intervals over the {m['n']} pairs.")
    html = (f"<p class='lead'>{escape(str(m.get('headline', '')))}</p>{metric_table(rows)}"
            f"{structure_table(m)}<p class='note'>{escape(note)}</p>")
    sections = [ReportSection("Registration results", html)]
    figure = example_figure(context)
    if figure:
        sections.append(ReportSection("Registration examples", figure))
    return sections


def example_figure(context: dict[str, Any]) -> str:
    from meddx.report.page import img_tag

    images, ddf = context["images"], context["ddf"]
    tags = []
    for i in range(min(N_EXAMPLES, len(images))):
        name = context["ids"][i] if context.get("ids") else f"pair {i}"
        png = pair_png(images[i, 0].numpy(), images[i, 1].numpy(), ddf[i].numpy(), str(name))
        tags.append(img_tag(png, f"registration example {name}"))
    return "".join(tags)


def middle_slice(image: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D image and its (2, H, W) in-plane field; a volume's middle axial slice."""
    if image.ndim == 2:
        return image, field
    z = image.shape[0] // 2
    return image[z], field[1:, z]


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    yy, xx = np.indices(a.shape)
    mask = ((yy * tiles // a.shape[0]) + (xx * tiles // a.shape[1])) % 2 == 0
    return np.where(mask, a, b)


def pair_png(fixed: np.ndarray, moving: np.ndarray, ddf: np.ndarray, title: str) -> bytes:
    """One row: fixed, moving, warped, checkerboard(fixed, warped), deformation grid, det J map."""
    import torch

    from meddx.metrics.registration import jacobian_determinant
    from meddx.models.registration_nets import warp
    from meddx.report.plots import _figure, _png

    warped = warp(torch.from_numpy(moving)[None, None].float(), torch.from_numpy(ddf)[None].float())[0, 0].numpy()
    f2, field2 = middle_slice(fixed, ddf)
    m2, _ = middle_slice(moving, ddf)
    w2, _ = middle_slice(warped, ddf)
    det = jacobian_determinant(field2)
    fig = _figure(13, 2.6)
    axes = fig.subplots(1, 6)
    panels = [(f2, "fixed"), (m2, "moving"), (w2, "warped moving"), (checkerboard(f2, w2), "checkerboard")]
    for ax, (img, label) in zip(axes, panels):
        ax.imshow(img, cmap="gray")
        ax.set_title(label, fontsize=8)
    _grid(axes[4], field2)
    im = axes[5].imshow(det, cmap="RdBu_r", vmin=0, vmax=2)
    axes[5].set_title(f"det J (min {det.min():.2f})", fontsize=8)
    fig.colorbar(im, ax=axes[5], shrink=0.7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title.replace("$", ""), fontsize=9)
    return _png(fig)


def _grid(ax: Any, field: np.ndarray, step: int = 4) -> None:
    """The deformed grid ``x + u(x)`` drawn every ``step`` pixels."""
    h, w = field.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    gy, gx = yy + field[0], xx + field[1]
    for r in range(0, h, step):
        ax.plot(gx[r], gy[r], color="k", lw=0.5)
    for c in range(0, w, step):
        ax.plot(gx[:, c], gy[:, c], color="k", lw=0.5)
    ax.set_xlim(0, w - 1)
    ax.set_ylim(h - 1, 0)
    ax.set_aspect("equal")
    ax.set_title("deformation grid", fontsize=8)
