"""``meddx pacs run``: one study from the PACS through the model and back (QIDO -> WADO -> predict -> STOW).

The retrieved instances are de-identified in memory before anything is written or logged; the results (SR,
SEG, SC) go back with the de-identified images they reference, as one de-identified study (its Study
Description says so), so a viewer resolves every reference and meddx never writes the original identifiers.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from meddx.errors import MeddxError

NON_IMAGE_CLASSES = {"1.2.840.10008.5.1.4.1.1.66.4"}  # Segmentation Storage: has pixel data, is no image


@dataclass
class StudyOutcome:
    study: str  # the de-identified Study Instance UID the results were stored under
    stored: dict[str, int]  # instances stored per modality
    results: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)  # pull, predict, push
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"study": self.study, "stored": self.stored, "seconds": self.seconds, "results": self.results,
                "notes": self.notes}


def process_study(predictor: Any, pacs: Any, study_uid: str, key: str | None = None, heatmap: bool = True
                  ) -> StudyOutcome:
    """Retrieve ``study_uid``, predict, and store the de-identified results back; ``key`` makes the
    de-identified UIDs repeatable (a re-run stores the same instances again, which the PACS keeps once)."""
    from meddx.dicomio.deid import Deidentifier
    from meddx.pacs.results import results_for_cases

    start = time.perf_counter()
    if not pacs.has_study(study_uid):
        raise MeddxError("no such study on the server (QIDO-RS found none)", pacs.url)
    datasets = pacs.retrieve_study(study_uid)
    pulled = time.perf_counter()
    cases = study_cases(predictor, datasets, Deidentifier(key))
    res = results_for_cases(predictor, cases, heatmap)
    for result, case in zip(res.results, cases):
        first = case.instances[0]
        result["file"] = f"series {first.SeriesInstanceUID}" if case.series else f"instance {first.SOPInstanceUID}"
    predicted = time.perf_counter()
    pacs.store(res.sources + res.outputs)
    stored: dict[str, int] = defaultdict(int)
    for ds in res.sources + res.outputs:
        stored[str(ds.Modality)] += 1
    seconds = {"pull": pulled - start, "predict": predicted - pulled, "push": time.perf_counter() - predicted}
    return StudyOutcome(str(res.sources[0].StudyInstanceUID), dict(stored), res.results,
                        {k: round(v, 3) for k, v in seconds.items()}, res.notes)


def study_cases(predictor: Any, datasets: list[Any], deidentify: Any) -> list[Any]:
    """The study's images, de-identified, as the model's inputs: one case per image for 2D models, one per
    series for volume models."""
    from meddx.pacs.results import Case

    images = [ds for ds in datasets if "PixelData" in ds and str(ds.get("SOPClassUID", "")) not in NON_IMAGE_CLASSES]
    if not images:
        raise MeddxError("the study holds no images")
    images = [deidentify(ds, f"instance {i + 1} of the study") for i, ds in enumerate(images)]
    if len(predictor.meta["image_shape"]) == 2:
        return [Case([ds]) for ds in images]
    by_series: dict[str, list[Any]] = defaultdict(list)
    for ds in images:
        by_series[str(ds.SeriesInstanceUID)].append(ds)
    return [Case(sorted(group, key=lambda d: int(d.get("InstanceNumber") or 0)), len(group) > 1)
            for group in by_series.values()]
