"""Results back into the PACS: DICOM in (de-identified), SR / SEG / SC out, over DICOMweb (QIDO, WADO, STOW).

:mod:`~meddx.pacs.results` turns DICOM inputs into de-identified DICOM results (``meddx predict --dicom-out``
uses it too); :mod:`~meddx.pacs.client` speaks DICOMweb through dicomweb-client; :mod:`~meddx.pacs.roundtrip`
is ``meddx pacs run`` and :mod:`~meddx.pacs.watch` ``meddx pacs watch`` (idempotent, with a ledger).
"""
