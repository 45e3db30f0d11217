"""Data: MedMNIST files, image folders, CSV manifests and the synthetic CT phantom, as in-memory tensors."""

from meddx.data.dataset import DataBundle, Split
from meddx.data.sources import load_data

__all__ = ["DataBundle", "Split", "load_data"]
