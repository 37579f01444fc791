"""Where the reference receiver files captures: one image file and one JSON file each.

Layout: ``<output_dir>/<kiosk_id>/<capture id>.<png|jpeg|wsq>`` and ``<capture id>.json``.
The JSON file is written last and created with ``link()``, which fails when the file
exists: that single atomic step both publishes a capture and de-duplicates it, even
between several receivers sharing one directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from agent.record import CaptureRecord

EXTENSIONS = {"png": "png", "jpeg": "jpg", "wsq": "wsq"}


class CaptureStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def paths(self, record: CaptureRecord) -> tuple[Path, Path]:
        folder = self.root / record.kiosk_id
        return (folder / f"{record.id}.{EXTENSIONS[record.image_format]}",
                folder / f"{record.id}.json")

    def contains(self, record: CaptureRecord) -> bool:
        return self.paths(record)[1].exists()

    def store(self, record: CaptureRecord) -> Literal["stored", "duplicate"]:
        image_path, meta_path = self.paths(record)
        if meta_path.exists():
            return "duplicate"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_durably(image_path, record.image, replace=True)
        meta = json.dumps(record.metadata(), indent=2, sort_keys=True).encode()
        return "stored" if self._write_durably(meta_path, meta, replace=False) else "duplicate"

    @staticmethod
    def _write_durably(path: Path, data: bytes, *, replace: bool) -> bool:
        """Write via a temporary file, fsync, then rename (replace) or link (first one wins)."""
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
                created = True
            else:
                try:
                    os.link(tmp, path)
                    created = True
                except FileExistsError:
                    created = False
                os.unlink(tmp)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new directory entry must survive a power cut too
            finally:
                os.close(dir_fd)
            return created
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.json"))
