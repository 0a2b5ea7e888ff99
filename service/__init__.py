"""The onnxprune service: REST API (FastAPI), CLI commands, and a Python client.

Thin layers: they parse, validate and hand a job id to ``jobs.run.run_job``, which calls the
one pipeline, ``workers.pipeline.run_pipeline``.
"""
