"""Symbolic input dims (a sentence length) take their size from ``--data`` when one is given, batch 1;
without data the probed size is said. Run as a user runs the CLI, in a process of its own.

bert-style:  x [batch, sequence, 32], attention_mask [batch, sequence] -> 2 encoder layers -> output
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from tests.support.cli import onnxprune
from tests.support.transformer_models import bert_style

FLAGS = ("--ratio", "0.5", "--criterion", "l1", "--recovery", "none", "--no-benchmark", "--round-to", "1")


def test_six_token_data_prunes_a_model_with_a_symbolic_sequence_without_input_shape(tmp_path):
    onnx.save(bert_style(hidden=32, heads=4, ffn=48, layers=2), tmp_path / "bert.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 6, 32)).astype(np.float32)
    np.savez(tmp_path / "six.npz", x=x, attention_mask=np.ones((20, 6), np.int64))

    done = onnxprune("prune", "bert.onnx", "-o", "out.onnx", *FLAGS, "--data", "six.npz", "--report", "r.json",
                     cwd=tmp_path)  # fmt: skip

    assert done.returncode == 0, done.stderr  # it was refused: "the model wants [1, 224, 32]"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["input_shapes"] == {"x": [1, 6, 32], "attention_mask": [1, 6]}
    assert "MACs, benchmark and oracle use 1x6x32 (the data's arrays, batch 1;" in done.stderr


def test_without_data_the_probed_sequence_length_is_said(tmp_path):
    onnx.save(bert_style(hidden=32, heads=4, ffn=48, layers=2), tmp_path / "bert.onnx")

    done = onnxprune("prune", "bert.onnx", "-o", "out.onnx", *FLAGS, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    assert "input 'x' has symbolic dims [1]: MACs, benchmark and oracle use 1x224x32 (the default probe size;" in (
        done.stderr
    )
