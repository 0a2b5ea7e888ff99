"""Where a job's files live under ``ONNXPRUNE_DATA_DIR/jobs/<job id>/``; names are ours, never the user's.

    input.onnx, data.npz       the upload (written once, by the API; plan_in.json with a plan to apply)
    attempts/<lease token>/    one attempt's scratch space: the pipeline writes its results here
    result/                    the published results (model.onnx, plan.json, report.json; with
                               quantize, model.float.onnx too: the float pruned model)

An attempt publishes by renaming its whole directory to ``result``: a rename of a directory onto a
non-empty one fails, so the first attempt to finish wins atomically, readers never see a half-written
result, and a late duplicate attempt cannot replace it.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from onnxprune.workers.fileio import float_output_path

MODEL, PLAN, REPORT = "model.onnx", "plan.json", "report.json"
REPORT_HTML = "report.html"  # the report page the job draws in its sandbox (``workers.html_report.PAGE_NAME``)
FLOAT_MODEL = float_output_path(Path(MODEL)).name  # the float pruned model the pipeline keeps beside MODEL


@dataclass(frozen=True)
class JobFiles:
    root: Path

    @classmethod
    def of(cls, jobs_dir: Path, job_id: str) -> JobFiles:
        return cls(Path(jobs_dir) / job_id)

    @property
    def upload(self) -> Path:
        return self.root / "input.onnx"

    @property
    def data(self) -> Path:
        return self.root / "data.npz"

    @property
    def plan_in(self) -> Path:
        """A plan uploaded to apply instead of scoring (``submit --plan-in``), checked by the API."""
        return self.root / "plan_in.json"

    @property
    def result(self) -> Path:
        return self.root / "result"

    @property
    def model(self) -> Path:
        return self.result / MODEL

    @property
    def float_model(self) -> Path:
        """The float pruned model, published beside a quantized ``model`` (the attempt's directory holds both)."""
        return self.result / FLOAT_MODEL

    @property
    def plan(self) -> Path:
        return self.result / PLAN

    @property
    def report(self) -> Path:
        return self.result / REPORT

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def new_attempt(self, token: str) -> Path:
        """A fresh directory for the attempt holding ``token``; other attempts' leftovers are removed
        (their leases are gone, so they can publish nothing: a live one notices and stops)."""
        if not self.upload.is_file():
            raise FileNotFoundError(f"the upload of job {self.root.name} is gone")
        if self.attempts.is_dir():
            for stale in self.attempts.iterdir():
                if stale.name != token:
                    shutil.rmtree(stale, ignore_errors=True)
        work = self.attempts / token
        work.mkdir(parents=True, exist_ok=False)
        return work

    def publish(self, work: Path) -> bool:
        """Make ``work`` the result; False if a result was already published (``work`` is removed)."""
        try:
            os.rename(work, self.result)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not self.result.is_dir():
                raise
            shutil.rmtree(work, ignore_errors=True)
            return False
        finally:
            _remove_if_empty(self.attempts)
        return True

    def discard_attempt(self, work: Path) -> None:
        shutil.rmtree(work, ignore_errors=True)
        _remove_if_empty(self.attempts)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another attempt's directory) or already gone
