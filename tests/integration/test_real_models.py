"""Real models exported by other people's tools (``../shared/models``) prune correctly or decline clearly.

Each model is loaded, prepared, analysed and pruned at ratio 0.3 with the l1 and random criteria;
the pruned model must satisfy the masked-original oracle, pass the full checker and load in
onnxruntime. A model whose channels cannot be pruned at all must come back fully frozen, every
group with a reason, never as a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from onnxprune.graphops.scoring import score_groups
from onnxprune.graphops.selection import select_by_ratio
from tests.support.oracle import Analysed, assert_prune_matches_oracle
from tests.support.real_models import REAL_MODEL_CASES, REAL_MODEL_PARAMS, RealModel, analysed_real

pytestmark = pytest.mark.integration  # the pipeline, the CLI or a sandbox, in processes of their own

RATIO = 0.3


@pytest.fixture
def analysed_model(shared_models_dir: Path) -> Callable[[RealModel], Analysed]:
    """Each file analysed once per test process (``tests.support.real_models.analysed_real``)."""
    return analysed_real


def test_every_shared_model_is_in_the_table(shared_models_dir: Path):
    on_disk = sorted(path.name for path in shared_models_dir.glob("*.onnx"))

    assert on_disk == sorted(case.file for case in REAL_MODEL_CASES)


@pytest.mark.parametrize("criterion", ["l1", "random"])
@pytest.mark.parametrize("case", REAL_MODEL_PARAMS)
def test_real_model_pruned_at_ratio_0_3_satisfies_the_oracle(analysed_model, case: RealModel, criterion: str):
    analysed = analysed_model(case)
    scores = score_groups(analysed.dep, criterion, seed=0)
    plan = select_by_ratio(analysed.dep, scores, RATIO)
    channels = {group.id: group.channels for group in analysed.dep.groups}
    removed = sum(channels[group_id] - len(keep) for group_id, keep in plan.keep.items())

    if not analysed.dep.prunable:
        assert analysed.dep.groups, "analysis found no channel group at all"
        assert all(group.frozen and group.frozen_reason for group in analysed.dep.groups)
        assert removed == 0
        return
    assert removed > 0, f"ratio {RATIO} removed no channel from {len(analysed.dep.prunable)} prunable groups"
    assert_prune_matches_oracle(analysed.original, plan, analysed=analysed)


@pytest.mark.parametrize("case", REAL_MODEL_PARAMS)
def test_real_model_analysis_explains_every_frozen_group(analysed_model, case: RealModel):
    analysed = analysed_model(case)

    for group in analysed.dep.frozen:
        assert group.frozen_reason, f"group {group.id} ({group.producers}) is frozen without a reason"
    if case.expect_prunable:
        assert analysed.dep.prunable, [group.frozen_reason for group in analysed.dep.frozen][:5]
