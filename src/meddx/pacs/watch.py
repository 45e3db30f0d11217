"""``meddx pacs watch``: poll the PACS (QIDO-RS) and process each new study once.

Studies meddx stored itself (Study Description "meddx de-identified") are skipped; each processed study gets
a ledger entry (:mod:`meddx.pacs.state`). A study that fails (a user error: no images, burned-in annotation)
is recorded with its one-line reason and not retried. Log lines name studies by their ledger id, never by UID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from meddx.errors import MeddxError


def watch(predictor: Any, pacs: Any, state: Any, *, interval: float = 10.0, once: bool = False,
          max_studies: int | None = None, log: Callable[[str], None] = print) -> int:
    """Process new studies until stopped (``once``: one pass; ``max_studies``: stop after that many)."""
    from meddx.dicomio.deid import MARK
    from meddx.pacs.roundtrip import process_study

    processed = 0
    while True:
        try:
            studies = pacs.studies()
        except MeddxError as exc:  # the PACS is down or busy: a watcher waits for it (one pass fails)
            if once:
                raise
            log(json.dumps({"error": str(exc)}))
            time.sleep(interval)
            continue
        for uid, description in studies:
            if description.startswith(MARK) or state.is_done(uid):
                continue
            ident = state.study_id(uid)
            try:
                outcome = process_study(predictor, pacs, uid, key=state.key)
            except MeddxError as exc:
                state.record(uid, {"error": str(exc)})
                log(json.dumps({"study": ident, "error": str(exc)}))
            else:
                state.record(uid, {"results_study": outcome.study, "stored": outcome.stored})
                log(json.dumps({"study": ident, "results_study": outcome.study, "stored": outcome.stored,
                                "seconds": outcome.seconds}))
            processed += 1
            if max_studies is not None and processed >= max_studies:
                return processed
        if once:
            return processed
        time.sleep(interval)
