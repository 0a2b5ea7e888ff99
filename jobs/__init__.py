"""What the API and the workers share: settings, the job store, job files, running one job, the retry
policy and the Celery app factory.

Layering (checked by tests/onnxprune/test_layering.py): ``service -> jobs -> workers -> roundtrip -> graphops``.
Nothing here does work at import time: settings, stores and the Celery app are built by the caller
(or lazily, on first use, for ``celery -A onnxprune.jobs.celery_app``).
"""
