"""Test inputs with planted PHI (name, ID, birth date, accession, UIDs) and the search for it in what meddx wrote.

Shared by test_dicomio.py, test_pacs.py and benchmarks/pacs.py: the TotalSegmentator CT series (its anonymised
copy has empty Study/Series/SOP UIDs in the data set: the study and series UIDs are planted here, the SOP UIDs
come from the file meta) and pydicom's CT_small.dcm.
"""

from __future__ import annotations

from pathlib import Path

PHI = {"PatientName": "Plantedname^Phiperson", "PatientID": "PHI-ID-98765", "PatientBirthDate": "19610423",
       "AccessionNumber": "ACC-PHI-4242", "InstitutionName": "Planted Phi Hospital",
       "ReferringPhysicianName": "Planteddoctor^Phi"}


def plant(ds, study_uid: str, series_uid: str) -> None:
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    meta = ds.file_meta
    ds.SOPClassUID = ds.get("SOPClassUID") or meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.get("SOPInstanceUID") or meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid


def planted_series(folder: Path, source: Path, study_uid: str | None = None, slices: int | None = None
                   ) -> tuple[Path, list[str]]:
    """The series in ``source`` with PHI planted, written to ``folder``; returns it and the planted values."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = study_uid or generate_uid(), generate_uid()
    values = set(PHI.values()) | {study, series}
    for i, f in enumerate(sorted(p for p in source.iterdir() if p.is_file() and "." in p.name)[:slices]):
        ds = pydicom.dcmread(str(f))
        plant(ds, study, series)
        values |= {str(ds.SOPInstanceUID), str(ds.get("FrameOfReferenceUID", "")) or study}
        ds.save_as(str(folder / f"{i:03d}.dcm"), enforce_file_format=True)
    return folder, sorted(values)


def planted_ct(path: Path, study_uid: str | None = None) -> tuple[Path, list[str]]:
    """pydicom's CT_small.dcm with PHI planted (new study/series/instance UIDs), written to ``path``."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    plant(ds, study_uid or generate_uid(), generate_uid())
    ds.FrameOfReferenceUID = generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path, sorted(set(PHI.values()) | {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                              str(ds.SOPInstanceUID), str(ds.FrameOfReferenceUID)})


def phi_hits(values: list[str], texts: list[str] = (), folders: list[Path] = ()) -> list[str]:
    """Each planted value found in ``texts`` or in any file under ``folders`` (as bytes), as 'value in where'."""
    hits = []
    blobs = [(f"text {i}", t.encode()) for i, t in enumerate(texts)]
    for folder in folders:
        blobs += [(str(p), p.read_bytes()) for p in Path(folder).rglob("*") if p.is_file()]
    for value in values:
        parts = [value] + [p for p in value.split("^") if len(p) > 3]
        for where, blob in blobs:
            if any(p.encode() in blob for p in parts):
                hits.append(f"{value} in {where}")
    return hits
