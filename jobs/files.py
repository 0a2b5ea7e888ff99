"""Where a job's files live under ``ONNXPRUNE_DATA_DIR/jobs/<job id>/``; names are ours, never the user's."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path



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
