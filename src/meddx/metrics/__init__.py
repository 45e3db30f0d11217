"""Classification metrics (MedMNIST definitions), calibration and bootstrap confidence intervals."""

from meddx.metrics._inputs import check_inputs
from meddx.metrics.batched import acc_metric, auc_metric
from meddx.metrics.bootstrap import bootstrap_ci, bootstrap_replicates
from meddx.metrics.calibration import compute_ece, reliability_bins
from meddx.metrics.classification import ClassificationMetric, evaluate_classification
from meddx.metrics.scores import (
    auc_per_class,
    compute_acc,
    compute_auc,
    confusion,
    per_class_metrics,
    predict_labels,
    roc_curves,
)

__all__ = [
    "ClassificationMetric",
    "acc_metric",
    "auc_metric",
    "auc_per_class",
    "bootstrap_ci",
    "bootstrap_replicates",
    "check_inputs",
    "compute_acc",
    "compute_auc",
    "compute_ece",
    "confusion",
    "evaluate_classification",
    "per_class_metrics",
    "predict_labels",
    "reliability_bins",
    "roc_curves",
]
