"""Startup with settings that do not hold: one line naming the variables and exit status 1, no traceback
(it was a 43-line traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.service_processes import REPO, api_command, free_port

BAD = [
    (
        {"ONNXPRUNE_SOFT_TIME_LIMIT_S": "4000"},
        ["ONNXPRUNE_SOFT_TIME_LIMIT_S", "ONNXPRUNE_TIME_LIMIT_S", "ONNXPRUNE_VISIBILITY_TIMEOUT_S", "4000"],
    ),
    ({"ONNXPRUNE_MAX_UPLOAD_MB": "-1"}, ["ONNXPRUNE_MAX_UPLOAD_MB", "greater than 0"]),
]
COMMANDS = {
    "uvicorn": api_command(free_port()),
    "serve": [sys.executable, "-m", "onnxprune", "serve", "--port", str(free_port())],
    "celery": [sys.executable, "-m", "celery", "-A", "onnxprune.jobs.celery_app", "worker", "--pool=solo"],
}


@pytest.mark.parametrize(("env", "named"), BAD, ids=["time-limits", "upload-limit"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_inconsistent_settings_stop_startup_with_one_line_naming_them(command, env, named, tmp_path):
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "ONNXPRUNE_DATA_DIR": str(tmp_path),
        "ONNXPRUNE_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached
        **env,
    }
    done = subprocess.run(COMMANDS[command], env=full_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 1
    settings_lines = [line for line in lines if "invalid settings" in line]
    assert len(settings_lines) == 1 and all(name in settings_lines[0] for name in named), lines
    assert not any("Traceback" in line for line in lines), lines
