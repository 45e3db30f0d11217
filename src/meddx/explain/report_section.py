"""The evaluation report's heat-map section: Grad-CAM for a few correct and a few wrong predictions per class.

Registered in ``meddx.engine.evaluate.REPORT_SECTIONS``. It is cheap (at most ``PER_KIND`` correct and
``PER_KIND`` wrong images for each of the first ``MAX_CLASSES`` classes, one Grad-CAM batch, one small
figure per class) and it never breaks an evaluation: any failure (no pytorch-grad-cam installed, a model
without a usable layer, ...) gives a section with a one-line note instead of the pictures.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

from meddx.kinds import MULTI_LABEL

TITLE = "Where the model looked (Grad-CAM)"
PER_KIND = 2
MAX_CLASSES = 16


def heatmap_section(context: dict[str, Any]):
    """``fn(context) -> ReportSection`` for ``REPORT_SECTIONS``; a note instead of pictures on any failure."""
    from meddx.report.page import ReportSection

    if context.get("meta", {}).get("task", "classification") != "classification" or "y_score" not in context:
        return None  # heat maps explain class scores; other tasks have their own report sections
    try:
        return ReportSection(TITLE, _render(context))
    except Exception as exc:  # noqa: BLE001 - the report must not fail because of an optional section
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        return ReportSection(TITLE, f"<p class='note'>Heat maps were skipped for this model: "
                                    f"{escape(exc.__class__.__name__)}: {escape(reason[:300])}</p>")


def pick_examples(y_true: np.ndarray, y_score: np.ndarray, multilabel: bool, per_kind: int = PER_KIND,
                  max_classes: int = MAX_CLASSES) -> list[tuple[int, str, list[int], list[int]]]:
    """Per class: (class, kind, image indices, explained class) for the most confident correct and wrong cases.

    Single-label: images of true class c the model got right (highest probability first) and got wrong
    (most confident mistake first); the map explains the *predicted* class. Multi-label: for finding c,
    found positives and mistakes (missed or false alarm, most confident first); the map explains c.
    """
    out = []
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    n_classes = y_score.shape[1]
    pred = y_score.argmax(1)
    for c in range(min(n_classes, max_classes)):
        if multilabel:
            has, said = y_true[:, c] == 1, y_score[:, c] > 0.5
            conf = np.abs(y_score[:, c] - 0.5)
            right, wrong = np.flatnonzero(has & said), np.flatnonzero(has != said)
            right = right[np.argsort(-y_score[right, c], kind="stable")][:per_kind]
            wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:per_kind]
            explained = ([c] * len(right), [c] * len(wrong))
        else:
            truth = y_true.reshape(len(y_true), -1)[:, 0]
            right = np.flatnonzero((truth == c) & (pred == c))
            wrong = np.flatnonzero((truth == c) & (pred != c))
            right = right[np.argsort(-y_score[right, c], kind="stable")][:per_kind]
            wrong = wrong[np.argsort(-y_score[wrong, pred[wrong]], kind="stable")][:per_kind]
            explained = (pred[right].tolist(), pred[wrong].tolist())
        out.append((c, "correct", right.tolist(), list(explained[0])))
        out.append((c, "wrong", wrong.tolist(), list(explained[1])))
    return out


def _render(context: dict[str, Any]) -> str:
    import torch

    from meddx.data.augment import Normalization
    from meddx.explain.methods import explain, resolve_layer

    model, meta = context["model"], context["meta"]
    data, split = context["data"], context.get("split", "test")
    classes = list(data.class_names)
    multilabel = meta.get("kind") == MULTI_LABEL
    picks = pick_examples(context["y_true"], context["y_score"], multilabel)
    index = sorted({i for _, _, idx, _ in picks for i in idx})
    if not index:
        return "<p class='note'>No images to show.</p>"
    images = getattr(data, split).images
    norm = Normalization(**meta["normalization"])
    layer_name = resolve_layer(model, None, meta["model"])[1]
    by_pair = {}
    for _, _, idx, explained in picks:
        by_pair.update({(i, t): None for i, t in zip(idx, explained)})
    pairs = list(by_pair)
    x = norm(images[torch.tensor([i for i, _ in pairs])])
    maps = explain(model, x, [t for _, t in pairs], "gradcam", model_name=meta["model"])
    cells = (picks, images, classes, np.asarray(context["y_score"]), multilabel)
    table = _table({pair: heat for pair, heat in zip(pairs, maps)}, *cells)
    more = (f" Only the first {MAX_CLASSES} of {len(classes)} classes are shown." if len(classes) > MAX_CLASSES
            else "")
    what = ("For each finding: found positives and mistakes (missed or false alarm), the map explaining that "
            "finding." if multilabel else "For each true class: the most confident correct predictions and the "
            "most confident mistakes; each map explains the class the model predicted (caption: class, "
            "probability).")
    html = (f"<p class='note'>Grad-CAM on layer <code>{escape(layer_name)}</code> of {escape(meta['model'])}: red "
            f"marks the regions that most raised the explained class's score. {what} A heat map shows where "
            f"the model looked, not whether it was right; on small images it is coarse.{more}</p>{table}")
    if has_attention(model):  # the network's own attention on the same images (issue #19)
        own = explain(model, x, [t for _, t in pairs], "attention")
        html += ("<p class='note'>The network's own attention on the same images (attention-gate / CBAM "
                 "coefficients, or the ViT's attention rollout; the same for every class).</p>"
                 + _table({pair: heat for pair, heat in zip(pairs, own)}, *cells))
    return html


def has_attention(model: Any) -> bool:
    from meddx.errors import MeddxError
    from meddx.explain.attention import attention_modules

    try:
        return bool(attention_modules(model)[1])
    except MeddxError:
        return False


def _table(found: dict, picks: list, images: Any, classes: list, y_score: np.ndarray, multilabel: bool) -> str:
    """Class rows x (correct, wrong) cells of overlaid maps."""
    from meddx.explain.overlay import row_png
    from meddx.report.page import img_tag

    rows = []
    for c in range(min(len(classes), MAX_CLASSES)):
        cells = []
        for kind in ("correct", "wrong"):
            _, _, idx, explained = next(p for p in picks if p[0] == c and p[1] == kind)
            if not idx:
                cells.append(f"<td class='note'>no {kind} predictions</td>")
                continue
            caps = [f"pred {classes[t]} ({y_score[i, t]:.2f})" if not multilabel
                    else f"{classes[t]}: {y_score[i, t]:.2f}" for i, t in zip(idx, explained)]
            png = row_png([images[i] for i in idx], [found[(i, t)] for i, t in zip(idx, explained)], caps)
            cells.append(f"<td>{img_tag(png, f'{classes[c]}: {kind}', 90 * len(idx) + 10)}</td>")
        rows.append(f"<tr><td>{escape(str(classes[c]))}</td>{''.join(cells)}</tr>")
    return ("<div class='table-wrap'><table class='metrics'><thead><tr><th>Class</th><th>Correct</th>"
            f"<th>Wrong</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
