"""De-identification before anything is kept, logged or echoed: the PS3.15 E.1 basic confidentiality profile.

dicognito does the profile's identifying work (names, IDs, dates shifted consistently, UIDs, addresses,
institutions): one :class:`Deidentifier` maps every UID of a study the same way, so references between its
instances (and to them from the SR/SEG/SC meddx writes) still resolve. No mapping table is kept: with no key,
the replacement is random (one-way); with a key (``pacs`` keeps one in its state folder) it is a keyed hash,
so a re-run makes the same UIDs (idempotent STOW) while the originals cannot be recovered from the outputs.

dicognito leaves some descriptive free text of Table E.1-1 (descriptions, comments, age, weight, history);
:data:`REMOVE` and :data:`EMPTY` below finish the profile, and private elements are removed (the profile's
default). Images with burned-in annotation are refused: pixels are never scrubbed.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from meddx.dicomio.common import STUDY_DESCRIPTION as MARK  # noqa: F401  (``pacs watch`` skips these studies)
from meddx.errors import MeddxError

# PS3.15 Table E.1-1 basic-profile actions for elements dicognito 0.19 leaves unchanged (checked by a test):
# X = remove, Z = replace by an empty value
REMOVE = (
    "StudyDescription", "SeriesDescription", "ImageComments", "AdditionalPatientHistory", "PatientAge",
    "PatientWeight", "PatientSize", "Occupation", "MedicalAlerts", "Allergies", "PatientComments",
    "EthnicGroup", "SmokingStatus", "PregnancyStatus", "ProtocolName", "DerivationDescription",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "RequestedProcedureDescription",
    "AdmittingDiagnosesDescription", "OperatorsName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord", "RequestAttributesSequence", "RequestingPhysician", "DeviceSerialNumber",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
    "MilitaryRank", "BranchOfService", "CountryOfResidence", "RegionOfResidence", "PatientTelephoneNumbers",
    "PatientReligiousPreference", "ResponsiblePerson", "ResponsibleOrganization", "ReasonForStudy",
    "RequestedContrastAgent", "StudyComments", "InstitutionalDepartmentName", "AcquisitionComments",
    "ContentCreatorName", "ScheduledPerformingPhysicianName", "SourceImageSequence", "ReferencedStudySequence",
    "ReferencedPatientSequence", "ReferencedPerformedProcedureStepSequence", "PatientAddress",
)
EMPTY = ("ReferringPhysicianName", "PatientSex", "StudyID")
METHOD = "meddx: PS3.15 E.1 basic profile (dicognito + meddx table)"


class Deidentifier:
    """One per study set: the same UIDs map to the same replacements. ``key``: ``None`` (random, one-way) or a
    secret string (a keyed, repeatable replacement)."""

    def __init__(self, key: str | None = None) -> None:
        from dicognito.anonymizer import Anonymizer

        self._anonymizer = Anonymizer(seed=key if key is not None else secrets.token_hex(16))

    def __call__(self, ds: Any, source: str | Path = "input") -> Any:
        """De-identify ``ds`` in place and return it (``source`` names the file in errors, never its content)."""
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise MeddxError("has burned-in annotation (BurnedInAnnotation YES): pixels may show identity and "
                             "are never scrubbed; refused", source)
        _check_uids(ds, source)
        self._anonymizer.anonymize(ds)
        ds.remove_private_tags()
        for keyword in REMOVE:
            if keyword in ds:
                delattr(ds, keyword)
        for keyword in EMPTY:
            if keyword in ds:
                setattr(ds, keyword, "")
        _mark(ds)
        return ds


def _mark(ds: Any) -> None:
    from pydicom.dataset import Dataset

    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "113100", "DCM", "Basic Application Confidentiality Profile")
    ds.DeidentificationMethodCodeSequence = [code]
    ds.StudyDescription = MARK


def read_deidentified(paths: list[Path], deidentifier: Deidentifier) -> list[Any]:
    """Read DICOM files whole and de-identify each (errors name the file, not its content)."""
    import pydicom

    from meddx.data.dicom import read_header

    out = []
    for path in paths:
        read_header(path)  # a clear one-line error for files that are not DICOM
        ds = pydicom.dcmread(str(path), force=True)
        out.append(deidentifier(ds, path))
    return out


def _check_uids(ds: Any, path: str | Path) -> None:
    """SOP Class/Instance UIDs blanked in the data set but kept in the file meta (as some anonymisers leave
    them) are restored from it; a missing Study/Series Instance UID cannot be referenced and is refused."""
    meta = getattr(ds, "file_meta", None)
    for keyword, meta_keyword in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                  ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
        if not ds.get(keyword) and meta is not None and meta.get(meta_keyword):
            setattr(ds, keyword, meta.get(meta_keyword))
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not ds.get(k)]
    if missing:
        raise MeddxError(f"has no {', '.join(missing)}: DICOM results could not reference it", path)


def new_key() -> str:
    return secrets.token_hex(32)
