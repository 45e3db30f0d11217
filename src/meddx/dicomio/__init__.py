"""DICOM out: de-identification (PS3.15 basic profile) and the objects meddx writes back (SR, SEG, SC).

:mod:`~meddx.dicomio.deid` de-identifies every instance before meddx keeps, logs or echoes it;
:mod:`~meddx.dicomio.sr` (TID 1500 Comprehensive SR), :mod:`~meddx.dicomio.seg` (DICOM SEG) and
:mod:`~meddx.dicomio.sc` (Secondary Capture of a heat-map overlay) build highdicom objects from de-identified
sources, so every reference they hold resolves within the de-identified study.
"""
