"""Report sections of reconstruction runs: the metric table (each method, PSNR/SSIM with bootstrap CIs) and
side-by-side slices: clean reference / degraded input / each method, with difference images."""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

N_EXAMPLES = 3


def _is_reconstruction(context: dict[str, Any]) -> bool:
    return context.get("metrics", {}).get("task") == "reconstruction" and "methods" in context


def _cell(stat: dict[str, Any], nd: int) -> str:
    mean, ci = stat.get("mean"), stat.get("ci") or []
    if mean is None or not np.isfinite(mean):
        return "—"
    tail = f" <span class='na'>({ci[0]:.{nd}f}–{ci[1]:.{nd}f})</span>" if ci and np.all(np.isfinite(ci)) else ""
    return f"{mean:.{nd}f}{tail}"


def metric_rows(methods: dict[str, dict[str, Any]]) -> str:
    return "".join(f"<tr><td>{escape(name)}</td><td class='num'>{_cell(m['psnr'], 2)}</td>"
                   f"<td class='num'>{_cell(m['ssim'], 3)}</td></tr>" for name, m in methods.items())


def metrics_section(context: dict[str, Any]):
    """PSNR (dB) and SSIM of each method on the split, means with 95 % bootstrap intervals over slices."""
    if not _is_reconstruction(context):
        return None
    from meddx.report.page import ReportSection

    m = context["metrics"]
    rng = m.get("intensity_range", {})
    head = "<tr><th>Method</th><th class='num'>PSNR (dB)</th><th class='num'>SSIM</th></tr>"
    note = (f"Degradation: {escape(str(m.get('degradation_summary', m.get('degradation'))))}. PSNR and SSIM per "
            f"slice after clipping to [{rng.get('lo')}, {rng.get('hi')}] {escape(str(rng.get('unit', '')))} "
            f"(data range = its width); brackets: 95 % percentile-bootstrap intervals over the {m.get('n')} "
            f"slices ({m.get('n_bootstrap')} resamples). Network inference: "
            f"{m.get('seconds_per_slice', float('nan')):.3f} s per slice.")
    html = (f"<p class='lead'>{escape(str(m.get('headline', '')))}</p><div class='table-wrap'><table class='metrics'>"
            f"<thead>{head}</thead><tbody>{metric_rows(m['methods'])}</tbody></table></div>"
            f"<p class='note'>{note}</p>")
    return ReportSection("Reconstruction quality", html)


def comparison_png(clean: np.ndarray, methods: dict[str, np.ndarray], lo: float, hi: float, title: str) -> bytes:
    """One row of images (reference, then each method) over one row of differences to the reference."""
    from meddx.report.plots import _figure, _png

    cols = 1 + len(methods)
    fig = _figure(2.2 * cols, 4.6)
    axes = fig.subplots(2, cols, squeeze=False)
    spread = 0.25 * (hi - lo)
    axes[0, 0].imshow(clean, cmap="gray", vmin=lo, vmax=hi)
    axes[0, 0].set_title(f"reference\n{title}", fontsize=7)
    for j, (name, img) in enumerate(methods.items(), start=1):
        axes[0, j].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        axes[0, j].set_title(name, fontsize=7)
        axes[1, j].imshow(img - clean, cmap="RdBu_r", vmin=-spread, vmax=spread)
        axes[1, j].set_title("difference", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    return _png(fig)


def comparison_section(context: dict[str, Any]):
    """Side-by-side slices and difference images (red: too bright, blue: too dark) for a few test slices."""
    if not _is_reconstruction(context):
        return None
    from meddx.report.page import ReportSection, img_tag

    clean, methods, rng = context["clean"], context["methods"], context["range"]
    ids = context.get("ids") or [str(i) for i in range(len(clean))]
    picks = np.linspace(0, len(clean) - 1, min(N_EXAMPLES, len(clean))).round().astype(int)
    figs = "".join(
        f"<figure>{img_tag(comparison_png(clean[i], {k: v[i] for k, v in methods.items()}, rng.lo, rng.hi, ids[i]), 'reconstruction comparison')}</figure>"  # noqa: E501
        for i in picks)
    note = (f"Grey scale: [{rng.lo:g}, {rng.hi:g}] {escape(rng.unit)}. Difference = method − reference, colour "
            f"scale ±{0.25 * rng.width:g}.")
    return ReportSection("Reference, degraded input and reconstructions", f"<p class='note'>{note}</p>{figs}")
