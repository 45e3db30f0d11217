"""What every object meddx writes shares: the producing model, derived UIDs, private codes, file writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANUFACTURER = "meddx"
STUDY_DESCRIPTION = "meddx de-identified"  # on every instance meddx writes or de-identifies (see deid.MARK)
SCHEME = "99MEDDX"  # private coding scheme for the run's class names (they have no standard code)


@dataclass(frozen=True)
class Producer:
    """The model behind the results: ``name`` (run name + architecture), ``version`` (meddx version + weights
    digest), ``classes`` and ``task``."""

    name: str
    version: str
    classes: tuple[str, ...]
    task: str

    def algorithm(self) -> Any:
        """highdicom's Algorithm Identification (SEG) for this model."""
        from highdicom.content import AlgorithmIdentificationSequence
        from highdicom.sr.coding import CodedConcept

        family = CodedConcept("123109", "DCM", "Artificial Intelligence")
        return AlgorithmIdentificationSequence(name=self.name[:64], family=family, version=self.version[:64])


def derived_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (e.g. the de-identified study UID + "sr"): the same inputs give the same UID,
    so storing the same result twice overwrites nothing new."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def class_code(index: int, name: str) -> Any:
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(f"C{index}", SCHEME, name[:64])


def write_dataset(ds: Any, path: Path) -> Path:
    """Save atomically (a crash never leaves half a DICOM file)."""
    from meddx.utils.io import atomic_write

    return atomic_write(path, lambda tmp: ds.save_as(str(tmp), enforce_file_format=True))
