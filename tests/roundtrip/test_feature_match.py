"""Fine-tuning also matches the original's intermediate features: the outputs of the layers that
lost input channels, on the channels the pruned model kept (``FeatureMatch``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from onnxprune.graphops.surgery import apply_plan
from onnxprune.roundtrip.context import build_context
from onnxprune.roundtrip.executor import OnnxModule
from onnxprune.roundtrip.objective import FeatureMatch
from onnxprune.roundtrip.reconstruction import layers_to_refit, matched_features
from onnxprune.roundtrip.training import evaluate, finetune
from onnxprune.workers.analysis import analyse_model
from onnxprune.workers.options import PruneOptions
from onnxprune.workers.stages import Stages
from onnxprune.workers.strategies import Job, choose_schedule
from tests.support.bn_net import samples
from tests.support.oracle import analyse

# Pipeline stages run in this process, as in a job's sandbox (tests/support/job_sandbox.py).
pytestmark = pytest.mark.usefixtures("stages_in_the_job_process")


@pytest.fixture(scope="module")
def analysed(small_model):
    return analyse(small_model, {"input": [1, 3, 12, 12]})


@pytest.fixture(scope="module")
def halved(analysed):
    plan = select_by_ratio(analysed.dep, score_groups(analysed.dep, "l1"), 0.5)
    return plan, apply_plan(analysed.dep, plan)


def test_features_are_the_refit_layers_outputs_on_the_channels_the_student_kept(analysed, halved):
    plan, pruned = halved
    student, teacher = OnnxModule(pruned), OnnxModule(analysed.prepared).eval()
    inputs = {"input": samples(2)}
    logits = pruned.graph.output[0].name

    features = matched_features(analysed.dep, plan, pruned, student, teacher, inputs, exclude=[logits])

    assert features is not None
    refit = [node.output[0] for node in layers_to_refit(analysed.prepared, pruned)[0]]
    assert features.tensors == [name for name in refit if name != logits]
    ours, theirs = student.run(inputs, outputs=features.tensors), teacher.run(inputs, outputs=features.tensors)
    for mine, original, kept in zip(ours, theirs, features.kept):
        assert mine.shape[1] == (original.shape[1] if kept is None else len(kept))
    assert any(kept is not None for kept in features.kept)  # some refit layer lost filters of its own too


def test_feature_loss_is_zero_on_the_teachers_own_kept_channels_and_grows_with_the_error():
    teacher = torch.randn(4, 6, 5, 5)
    kept = np.array([0, 2, 5])
    match = FeatureMatch(["a", "b"], [kept, None])

    exact = match.loss([teacher[:, kept], teacher], [teacher, teacher])
    off = match.loss([teacher[:, kept] + 0.1, teacher], [teacher, teacher])
    further = match.loss([teacher[:, kept] + 0.3, teacher], [teacher, teacher])

    assert float(exact) == pytest.approx(0.0, abs=1e-12)
    assert 0 < float(off) < float(further)


def test_matching_features_recovers_fidelity_and_brings_the_features_closer_than_outputs_alone(
    analysed, halved, small_data
):
    plan, pruned = halved
    context = build_context(small_data["unlabelled"], analysed.prepared, None, batch_size=16, score_batches=2)
    teacher = context.objective.teacher
    features = matched_features(
        analysed.dep, plan, pruned, OnnxModule(pruned), teacher, {"input": samples(2)}, context.objective.tensors
    )
    unseen = {"input": samples(64, seed=123)}

    def feature_error(module: OnnxModule) -> float:
        with torch.no_grad():
            ours = module.eval().run(unseen, outputs=features.tensors)
            return float(features.loss(ours, teacher.run(unseen, outputs=features.tensors)))

    def tuned(match: FeatureMatch | None) -> OnnxModule:
        module = OnnxModule(pruned)
        finetune(module, context.objective, context.train, steps=60, lr=0.02, batch_size=16, features=match)
        return module

    pruned_only, outputs_only, matched = OnnxModule(pruned), tuned(None), tuned(features)

    before = evaluate(pruned_only, context.objective, context.validation, 32)
    after = evaluate(matched, context.objective, context.validation, 32)
    assert after.cosine > before.cosine + 0.25 * (1 - before.cosine)  # fidelity recovered on unseen samples
    assert feature_error(matched) < 0.7 * feature_error(pruned_only)
    assert feature_error(matched) < feature_error(outputs_only)


@pytest.mark.parametrize("match", [True, False])
def test_match_features_option_decides_whether_recovery_trains_on_features(small_model, small_data, tmp_path, match):
    import onnxprune.roundtrip.training as training

    analysis = analyse_model(small_model, {"input": [1, 3, 12, 12]})
    options = PruneOptions(
        ratio=0.5, round_to=1, finetune_steps=3, batch_size=16, benchmark=False, match_features=match
    )
    job = Job(analysis, options, Stages(), tmp_path, data_path=small_data["labelled"])
    seen: list[FeatureMatch | None] = []
    real_finetune = training.finetune

    def spy(*args, **kwargs):
        seen.append(kwargs.get("features"))
        return real_finetune(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "finetune", spy)
        outcome = choose_schedule(options, has_data=True).run(job)

    assert len(seen) == 1 and (seen[0] is not None) == match
    assert len(outcome.finetune.losses) == 3
