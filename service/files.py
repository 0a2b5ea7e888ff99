"""Where a job's files live under ``ONNXPRUNE_DATA_DIR/jobs/<job id>/``; names are ours, never the user's."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class JobFiles:
    root: Path

    @classmethod
    def of(cls, jobs_dir: Path, job_id: str) -> "JobFiles":
        return cls(Path(jobs_dir) / job_id)

    @property
    def upload(self) -> Path:
        return self.root / "input.onnx"

    @property
    def data(self) -> Path:
        return self.root / "data.npz"

    @property
    def model(self) -> Path:
        return self.root / "model.onnx"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def clear_for_run(self) -> None:
        """Remove everything but the upload: results and scratch files of an interrupted attempt."""
        keep = {self.upload.name, self.data.name}
        for path in self.root.iterdir():
            if path.name in keep:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def discard_results(self) -> None:
        for path in (self.model, self.plan, self.report):
            path.unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one, never half (tmp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
