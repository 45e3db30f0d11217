"""Label structures ("kinds") of classification data, with MedMNIST's exact task strings.

A kind says how labels are laid out: one class id per image (binary, multi-class, ordinal grades) or one 0/1
column per label (multi-label). These strings are MedMNIST's ``task`` values, stored in ``metrics.json``,
checkpoints and deployed models, so they must not change.
"""

from __future__ import annotations

BINARY = "binary-class"
MULTI_CLASS = "multi-class"
MULTI_LABEL = "multi-label, binary-class"
ORDINAL = "ordinal-regression"
KINDS: tuple[str, ...] = (BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL)

# The other label structures a data bundle can hold (its ``task``), beside the classification kinds.
SEGMENTATION = "segmentation"  # dense masks (N, 1, *spatial)
DETECTION = "detection"  # one {"boxes", "labels"} dict per image
REGISTRATION = "registration"  # (fixed, moving) image and label channels (N, 2, *spatial)

__all__ = ["BINARY", "DETECTION", "KINDS", "MULTI_CLASS", "MULTI_LABEL", "ORDINAL", "REGISTRATION", "SEGMENTATION"]
