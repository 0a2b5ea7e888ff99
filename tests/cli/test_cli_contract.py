"""The CLI's contract with people and programs: --version, output off a terminal, progress, exit codes.

Every test runs the CLI as a user does, as a separate process whose stdout and stderr are pipes (not a
terminal), the way CI logs and shell pipelines see it. Exit codes: 0 ok, 1 our fault, 2 the user's
input, 3 a server that refuses (README, "Exit codes").
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.workers.stages import STAGE_END
from tests.support.cli import onnxprune as run_cli
from tests.support.small_models import residual_model

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

ROOT = Path(__file__).resolve().parents[2]
LONG = "a_node_name_long_enough_that_three_of_them_overflow_eighty_columns"


def onnxprune(*args: str | Path, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m onnxprune``, the package's own entry point."""
    return run_cli(*args, cwd=cwd, module="onnxprune", extra_path=extra_path)


def one_error_line(stderr: str) -> str:
    """The one error line, after any progress lines (which start with '['); never a traceback."""
    assert "Traceback" not in stderr
    rest = [line for line in stderr.splitlines() if not line.startswith("[")]
    assert len(rest) == 1, stderr
    return rest[0]


# session, not module: cheap to build, and a module-scoped fixture puts every test of the module on one
# xdist worker (tests/conftest.py), where these long tests would queue behind each other.
@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The residual model with long node names, so its tables are wider than 80 columns."""
    model = residual_model()
    for index, node in enumerate(model.graph.node):
        node.name = f"{LONG}_{index}"
    path = tmp_path_factory.mktemp("contract") / "residual.onnx"
    onnx.save(model, path)
    return path


def test_version_prints_the_installed_version():
    from onnxprune import __version__

    result = onnxprune("--version", cwd=ROOT)

    assert result.returncode == 0
    assert result.stdout.strip() == f"onnxprune {__version__}"


def test_off_a_terminal_tables_are_full_width_and_never_truncated(model_path, tmp_path):
    result = onnxprune("analyze", model_path, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    producers = [line for line in result.stdout.splitlines() if f"{LONG}_0" in line]
    assert producers and max(len(line) for line in producers) > 80
    assert all(line.startswith(("|", "+")) for line in producers), "plain ASCII table rows"


def test_prune_prints_one_progress_line_per_stage_on_stderr(model_path, tmp_path):
    result = onnxprune("prune", model_path, "-o", "out.onnx", "--runs", "3", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    stages = [line.split()[-1] for line in result.stderr.splitlines() if line.startswith("[")]
    assert stages == [s for s in STAGE_END if s not in ("finetune", "quantize")]  # those asked for, in order, once
    assert stages[0] == "load" and stages[-1] == "report"
    assert "MACs" in result.stdout


def test_prune_prints_each_warning_once_on_stderr(model_path, tmp_path):
    result = onnxprune("prune", model_path, "-o", "out.onnx", "--ratio", "0.5", "--report", "r.json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert warnings, "pruning half of a random model's filters without data warns about fidelity"
    stdout = " ".join(result.stdout.split())  # a table caption wraps long lines
    for warning in warnings:
        assert " ".join(warning.split()) not in stdout
        assert result.stderr.count(warning) == 1


def test_prune_json_prints_the_report_alone_on_stdout_and_progress_on_stderr(model_path, tmp_path):
    result = onnxprune("prune", model_path, "-o", "out.onnx", "--ratio", "0.5", "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # nothing but the report
    assert report["macs"]["after"] < report["macs"]["before"]
    assert report["output_sha256"] and (tmp_path / "out.onnx").is_file()
    assert "% load" in result.stderr


@pytest.mark.slow
def test_fine_tuning_prints_a_progress_line_every_few_steps(model_path, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((20, 3, 8, 8)).astype(np.float32))

    result = onnxprune(
        "prune",
        model_path,
        "-o",
        "out.onnx",
        "--data",
        "d.npz",
        "--finetune-steps",
        "40",
        "--batch-size",
        "8",
        "--no-benchmark",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if "finetune " in line and "/40" in line]
    assert 5 <= len(steps) <= 21 and steps[-1].split("finetune ")[1].startswith("40/40")


BAD_INPUT_CASES = [
    # (id, arguments after the model, words the one-line error must hold)
    ("missing output directory", ["-o", "no/such/dir/out.onnx"], "output directory no/such/dir does not exist"),
    ("missing report directory", ["-o", "out.onnx", "--report", "nowhere/r.json"], "output directory nowhere"),
    (
        "exclude that matches nothing",
        ["-o", "out.onnx", "--exclude", "head*"],
        "exclude pattern 'head*' matches no node",
    ),
    ("ratio out of range", ["-o", "out.onnx", "--ratio", "1.5"], "ratio must be in [0, 1)"),
    ("fine-tuning without data", ["-o", "out.onnx", "--finetune-steps", "5"], "needs data"),
    (
        "a named recovery without data",
        ["-o", "out.onnx", "--recovery", "reconstruct"],
        "recovery 'reconstruct' needs data",
    ),
]


@pytest.mark.parametrize("args, words", [c[1:] for c in BAD_INPUT_CASES], ids=[c[0] for c in BAD_INPUT_CASES])
def test_bad_input_is_one_line_and_exit_2_and_writes_nothing(model_path, tmp_path, args, words):
    result = onnxprune("prune", model_path, *args, cwd=tmp_path)

    assert result.returncode == 2
    assert one_error_line(result.stderr).startswith("error: ") and words in one_error_line(result.stderr)
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "no").exists()


def test_options_that_only_tune_work_on_data_are_named_in_a_warning_without_data(model_path, tmp_path):
    result = onnxprune(
        "prune", model_path, "-o", "out.onnx", "--report", "r.json", "--no-benchmark", "--lr", "0.01",
        "--image-channels", "bgr", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    (warning,) = [w for w in json.loads((tmp_path / "r.json").read_text())["warnings"] if "without data" in w]
    assert warning.startswith("without data these options change nothing: --image-channels bgr, --lr 0.01 ")
    assert f"warning: {warning}" in " ".join(result.stderr.split())


def test_an_exclude_that_matches_a_node_is_accepted(model_path, tmp_path):
    result = onnxprune("prune", model_path, "-o", "out.onnx", "--exclude", f"{LONG}_0", "--no-benchmark", cwd=tmp_path)

    assert result.returncode == 0, result.stderr


def test_our_own_fault_is_exit_1_and_says_so(model_path, tmp_path):
    """A bug of ours (simulated in the report step) is an internal error, never blamed on the user's model."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import onnxprune.workers.pipeline
        def broken(*args, **kwargs):
            raise RuntimeError("simulated bug in the report")
        onnxprune.workers.pipeline.build_report = broken
    """)
    )

    result = onnxprune("prune", model_path, "-o", "out.onnx", cwd=tmp_path, extra_path=hooks)

    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith("error: internal error: RuntimeError: simulated bug in the report")


NO_TORCH = """
import sys

class _NoTorch:
    \"\"\"Behave as an installation without the [torch] extra.\"\"\"
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, _NoTorch())
"""


@pytest.mark.parametrize(
    "args",
    [["--finetune-steps", "5"], ["--criterion", "taylor"], ["--criterion", "l1"]],
    ids=["finetune", "taylor", "l1-with-data-reconstructs"],  # with data, the default recovery runs in torch
)
def test_without_torch_a_data_driven_prune_says_how_to_install_it_and_exits_2(model_path, tmp_path, args):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(NO_TORCH)
    np.savez(tmp_path / "d.npz", input=np.zeros((10, 3, 8, 8), np.float32))

    result = onnxprune("prune", model_path, "-o", "out.onnx", "--data", "d.npz", *args, cwd=tmp_path, extra_path=hooks)

    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, "refused before any stage runs"
    assert "needs PyTorch, which is not installed" in result.stderr and "onnxprune[torch]" in result.stderr
    assert "download.pytorch.org/whl/cpu" in result.stderr


def test_without_torch_magnitude_pruning_still_works(model_path, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(NO_TORCH)

    result = onnxprune("prune", model_path, "-o", "out.onnx", "--no-benchmark", cwd=tmp_path, extra_path=hooks)

    assert result.returncode == 0, result.stderr


def test_submit_to_a_server_that_is_not_there_is_exit_1(model_path, tmp_path):
    result = onnxprune("submit", model_path, "--server", "http://127.0.0.1:9", "-o", "out.onnx", cwd=tmp_path)

    assert result.returncode == 1
    assert "cannot talk to http://127.0.0.1:9" in result.stderr


def test_submit_into_a_missing_directory_is_exit_2_before_any_upload(model_path, tmp_path):
    result = onnxprune("submit", model_path, "--server", "http://127.0.0.1:9", "-o", "no/out.onnx", cwd=tmp_path)

    assert result.returncode == 2
    assert "output directory no does not exist" in result.stderr
