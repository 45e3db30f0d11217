"""``meddx pacs watch``'s state folder: the de-identification key and the ledger of studies processed.

The ledger holds keyed hashes (HMAC-SHA256 with the key) of the studies' UIDs, never the UIDs; it is rewritten
atomically after each study, so a kill at any moment leaves either the old or the new ledger. A study killed
between its STOW and its ledger entry is processed again after a restart; the key makes the same
de-identified UIDs, so the PACS receives the same instances and keeps them once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError
from meddx.utils.io import atomic_write, write_json_atomic


class State:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = self._key()
        self.ledger_path = self.folder / "ledger.json"
        self.ledger: dict[str, Any] = self._read_ledger()

    def _key(self) -> str:
        path = self.folder / "key"
        if not path.is_file():
            from meddx.dicomio.deid import new_key

            atomic_write(path, lambda tmp: tmp.write_text(new_key()))
            os.chmod(path, 0o600)
        return path.read_text().strip()

    def _read_ledger(self) -> dict[str, Any]:
        if not self.ledger_path.is_file():
            return {"format": 1, "studies": {}}
        try:
            ledger = json.loads(self.ledger_path.read_text())
            ledger["studies"]
        except (ValueError, KeyError, TypeError):
            raise MeddxError("is not a meddx pacs ledger (unreadable JSON)", self.ledger_path) from None
        return ledger

    def study_id(self, study_uid: str) -> str:
        return hmac.new(self.key.encode(), study_uid.encode(), hashlib.sha256).hexdigest()[:32]

    def is_done(self, study_uid: str) -> bool:
        return self.study_id(study_uid) in self.ledger["studies"]

    def record(self, study_uid: str, entry: dict[str, Any]) -> None:
        self.ledger["studies"][self.study_id(study_uid)] = entry | {"at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(self.ledger_path, self.ledger)
