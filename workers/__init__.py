"""The job pipeline (load -> validate -> analyse -> score -> plan -> apply -> verify ->
benchmark -> report) and the Celery app that runs it. The CLI, the embedded service
and Celery workers all call :func:`workers.pipeline.run_pipeline`."""
