"""Move a one-host deployment (SQLite and the data directory) to many hosts (PostgreSQL and S3).

Copies every job's record and files through the two store interfaces, so the target may be any pair
of implementations. Run it with the API and the workers stopped; it refuses while jobs are queued or
running (let them finish first: their files are still being written). It can run again after an
interruption: records already copied are kept as they are, objects are overwritten with the same bytes.

    python -m onnxprune.jobs.copy_deployment --from-data-dir /srv/onnxprune \\
        --to-database postgresql://onnxprune@db:5432/onnxprune --to-artifacts s3://bucket/prefix \\
        [--s3-endpoint-url http://s3:8333]       # credentials from the AWS_* variables
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from onnxprune.jobs.artifacts import AttemptSpace, open_artifact_store
from onnxprune.jobs.files import JobFiles
from onnxprune.jobs.job_store import JobStatus, StoreError, open_job_store
from onnxprune.jobs.settings import Settings
from onnxprune.jobs.store import SqliteJobStore

COPIED_TOKEN = "copied"  # the attempt key a copied result is published under


@dataclass(frozen=True)
class Copied:
    jobs: int
    results: int
    skipped: int  # already in the target


def copy_deployment(source_data_dir: Path, target: Settings) -> Copied:
    """Copy the jobs of the deployment in ``source_data_dir`` to the stores ``target`` names."""
    source = Settings(data_dir=source_data_dir)
    jobs = SqliteJobStore(source.database_path)
    active = sum(jobs.counts().values())
    if active:
        raise ValueError(f"{active} jobs are queued or running: stop the API, let the workers finish, then copy")
    to_jobs, to_files = open_job_store(target), open_artifact_store(target)
    copied = results = skipped = 0
    for job in jobs.all_records():
        files = JobFiles.of(source.jobs_dir, job.id)
        if files.upload.is_file():
            staged = to_files.staging(job.id)
            for path in (files.upload, files.data):
                if path.is_file():
                    shutil.copyfile(path, staged.root / path.name)
            to_files.commit_inputs(job.id)
        record = job
        if job.status is JobStatus.succeeded and files.model.is_file():
            space = AttemptSpace(files.upload, None, files.result)  # read only: publish copies the results
            published = to_files.publish(job.id, COPIED_TOKEN, space)
            record = dataclasses.replace(job, result_key=published.result_key, result_bytes=published.size)
            results += 1
        if to_jobs.restore(record):
            copied += 1
        else:
            skipped += 1
    return Copied(copied, results, skipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnxprune.jobs.copy_deployment", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--from-data-dir", type=Path, required=True, help="ONNXPRUNE_DATA_DIR of the old deployment")
    parser.add_argument("--to-database", required=True, help="ONNXPRUNE_DATABASE_URL of the new deployment")
    parser.add_argument("--to-artifacts", required=True, help="ONNXPRUNE_ARTIFACTS_URL of the new deployment")
    parser.add_argument("--s3-endpoint-url", default=None, help="ONNXPRUNE_S3_ENDPOINT_URL (not AWS)")
    parser.add_argument("--scratch-dir", type=Path, default=Path("copy-scratch"), help="temporary files")
    args = parser.parse_args(argv)
    target = Settings(
        data_dir=args.scratch_dir,
        database_url=args.to_database,
        artifacts_url=args.to_artifacts,
        s3_endpoint_url=args.s3_endpoint_url,
    )
    try:
        copied = copy_deployment(args.from_data_dir, target)
    except (ValueError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    print(f"copied {copied.jobs} jobs ({copied.results} with results); {copied.skipped} were there already")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
