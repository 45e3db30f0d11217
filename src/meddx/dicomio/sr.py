"""A TID 1500 measurement report (Comprehensive SR) of classification results, with highdicom.

One measurement group per classified image: the finding (the predicted class, as the group's finding type), its
probability (UCUM "1"), the model (TID 4019 algorithm identification: name and version) and the source image
reference. The device observer is the model; the evidence lists every referenced instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meddx.dicomio.common import MANUFACTURER, SCHEME, STUDY_DESCRIPTION, Producer, class_code, derived_uid

PROBABILITY = ("P", SCHEME, "Probability of finding")
IMAGING_PROCEDURE = ("363679005", "SCT", "Imaging procedure")


@dataclass(frozen=True)
class ImageFinding:
    """The classification of one source image: its predicted class index and that class's probability."""

    source: Any  # the de-identified pydicom Dataset
    class_index: int
    probability: float


def classification_sr(findings: Sequence[ImageFinding], producer: Producer, series_number: int = 901) -> Any:
    """The Comprehensive SR (TID 1500) for ``findings`` (all from one de-identified study)."""
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    study = str(findings[0].source.StudyInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(name=producer.name[:64], version=producer.version[:64])
    groups = [_group(f, producer, algorithm, i) for i, f in enumerate(findings, 1)]
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=derived_uid(producer.name, producer.version),
                                                       name=producer.name[:64], manufacturer_name=MANUFACTURER,
                                                       model_name=producer.name[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=CodedConcept("121007", "DCM", "Device"), observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=CodedConcept(*IMAGING_PROCEDURE),
                                     imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[f.source for f in findings], content=report[0],
        series_instance_uid=derived_uid(study, producer.name, "sr-series"), series_number=series_number,
        sop_instance_uid=derived_uid(study, producer.name, producer.version, "sr"), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, series_description=f"meddx {producer.name} findings"[:64])
    sr.StudyDescription = STUDY_DESCRIPTION
    return sr


def _group(finding: ImageFinding, producer: Producer, algorithm: Any, n: int) -> Any:
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    src = finding.source
    name = producer.classes[finding.class_index]
    tracking = hd.sr.TrackingIdentifier(uid=derived_uid(str(src.SOPInstanceUID), producer.name, "tracking"),
                                        identifier=f"meddx image {n}")
    probability = hd.sr.Measurement(name=CodedConcept(*PROBABILITY), value=round(float(finding.probability), 6),
                                    unit=CodedConcept("1", "UCUM", "no units"), algorithm_id=algorithm)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking, algorithm_id=algorithm, measurements=[probability],
        finding_type=class_code(finding.class_index, name),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src)])


def read_findings(sr: Any) -> list[dict[str, Any]]:
    """The findings of an SR meddx wrote, read back through highdicom: one dict per measurement group with the
    finding's class name, the probability, the algorithm name/version and the referenced SOP Instance UIDs."""
    import highdicom as hd

    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    out = []
    for group in report.content.get_image_measurement_groups():
        (measurement,) = group.get_measurements()
        out.append({"finding": group.finding_type.meaning, "probability": float(measurement.value),
                    "algorithm": (_text(group, "111001"), _text(group, "111003")),
                    "sources": [s.referenced_sop_instance_uid for s in group.source_images]})
    return out


def _text(group: Any, code: str) -> str | None:
    """The TEXT item with concept ``code`` (TID 4019: 111001 algorithm name, 111003 version) in a group."""
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == code:
            return str(item.TextValue)
    return None
