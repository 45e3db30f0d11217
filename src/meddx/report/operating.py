"""Report blocks that keep a classification report honest: the never-predicted warning, the majority-class
baseline, and (binary tasks) the finding's decision thresholds chosen on the validation split.

They read the keys :func:`meddx.metrics.evaluate_classification` and
:func:`meddx.metrics.operating.operating_points` write (``never_predicted``, ``baseline``,
``positive_name``, ``thresholds``); a metrics dict without them renders nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from meddx.kinds import BINARY, MULTI_LABEL
from meddx.report.page import num, val

RULES = {"0.5": "Default (0.5)", "youden": "Youden's J", "sens90": "Sensitivity ≥ 90%"}


def never_predicted_banner(metrics: Mapping[str, Any]) -> str:
    """A warning when some class is never predicted on the scored split (empty string otherwise)."""
    missing = metrics.get("never_predicted") or []
    if not missing:
        return ""
    names = ", ".join(f"<em>{escape(str(n))}</em>" for n in missing)
    what = "finding" if metrics.get("kind") == MULTI_LABEL else "class"
    plural = "es" if what == "class" and len(missing) > 1 else ("s" if len(missing) > 1 else "")
    return (
        f'<div class="warn" id="never-predicted" role="alert"><strong>Warning: the model never predicted '
        f"the {what}{plural} {names} on these {int(metrics.get('n') or 0):,} images.</strong> Every such "
        "image is missed, whatever the accuracy says; the sensitivity of that class is 0 and its precision "
        "undefined. Check the threshold (see the validation-chosen thresholds below, where shown), the class "
        "balance of the training data and the training length before using this model.</div>"
    )


def baseline_block(metrics: Mapping[str, Any]) -> str:
    """Model vs always answering the most frequent class: ACC and AUC side by side."""
    base = metrics.get("baseline")
    if not base:
        return ""
    if base.get("class") is None:
        who = "Always answering each finding's more common value"
    else:
        who = f"Always answering <em>{escape(str(base['class']))}</em> (the most common class here)"
    acc, b_acc = val(metrics.get("acc")), val(base.get("acc"))
    verdict = ""
    if acc is not None and b_acc is not None:
        gain = acc - b_acc
        verdict = (
            f" The model's accuracy is {abs(gain) * 100:.1f} percentage points "
            f"{'above' if gain >= 0 else 'below'} this baseline."
        )
        if gain < 0.02:
            verdict += " <strong>Accuracy alone does not show that the model learned anything.</strong>"
    return (
        "<div class='table-wrap'><table class='metrics baseline'><thead><tr><th>Compared with</th>"
        "<th class='num'>ACC</th><th class='num'>AUC</th></tr></thead><tbody>"
        f"<tr><td>This model</td><td class='num'>{num(acc)}</td><td class='num'>{num(metrics.get('auc'))}</td></tr>"
        f"<tr><td>{who}</td><td class='num'>{num(b_acc)}</td><td class='num'>{num(base.get('auc'))}</td></tr>"
        f"</tbody></table></div><p class='note'>A model that ignores the image and always gives the same answer "
        f"scores the baseline.{verdict}</p>"
    )


def _threshold_row(key: str, row: Mapping[str, Any] | None) -> str:
    rule = escape(RULES.get(key, key))
    if not row:
        return (f"<tr><td>{rule}</td><td class='num na' colspan='8'>not available (no validation split "
                "with both classes to choose it on)</td></tr>")
    ref = ""
    if row.get("reference_n"):
        ref = f"{num(row.get('reference_sensitivity'))} / {num(row.get('reference_specificity'))}"
    cells = [f"{val(row.get('threshold')):.3g}" if val(row.get("threshold")) is not None else "—"]
    cells += [num(row.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")]
    cells += [f"{int(row.get('fn', 0)):,}", f"{int(row.get('fp', 0)):,}", ref or "—"]
    return f"<tr><td>{rule}</td>" + "".join(f"<td class='num'>{c}</td>" for c in cells) + "</tr>"


def thresholds_section(metrics: Mapping[str, Any]) -> str:
    """Binary tasks: sensitivity, specificity, PPV and NPV of the finding at 0.5 and at the validation-chosen
    thresholds, all measured on the scored split."""
    thresholds = metrics.get("thresholds")
    if metrics.get("kind") != BINARY or not thresholds:
        return ""
    pos = escape(str(metrics.get("positive_name", "")))
    head = "".join(
        f"<th class='num'>{h}</th>"
        for h in ("Threshold", "Sensitivity", "Specificity", "PPV", "NPV", "Missed (FN)", "False alarms (FP)",
                  "Validation sens. / spec.")
    )
    rows = "".join(_threshold_row(k, thresholds.get(k)) for k in RULES)
    chosen = next((r for k, r in thresholds.items() if k != "0.5" and r), None)
    where = (
        f"chosen on the validation split ({int(chosen['reference_n']):,} images), then applied unchanged to "
        "these images" if chosen else "not chosen: no validation split was available for this evaluation"
    )
    return (
        f'<section id="thresholds"><h2>Finding: <em>{pos}</em> — decision thresholds</h2>'
        f"<p class='note'>An image is flagged as <em>{pos}</em> when the model's probability of <em>{pos}</em> "
        f"is at or above the threshold. Sensitivity, specificity, PPV and NPV below are for <em>{pos}</em> "
        f"on these {int(metrics.get('n') or 0):,} images. The Youden and 90%-sensitivity thresholds were "
        f"{where}; the last column shows what they gave on validation. Youden's J maximises sensitivity + "
        "specificity − 1; the 90% rule is the highest threshold that found at least 90% of the validation "
        f"<em>{pos}</em> cases. The default row follows MedMNIST's rule, the one behind the accuracy and the "
        "confusion matrix.</p>"
        f"<div class='table-wrap'><table class='metrics'><thead><tr><th>Rule</th>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
        "<p class='note'>PPV and NPV depend on how common the finding is in this test set; they change in a "
        "population where it is rarer or more common.</p></section>"
    )
