"""The criteria registry refuses a second criterion of one name, in code or from entry points: which
one ranked the filters would otherwise depend on import order or on the installation."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from onnxprune.graphops import scoring
from onnxprune.graphops.errors import DuplicateRegistration


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry, and entry points the test names (none by default)."""
    monkeypatch.setattr(scoring, "_CRITERIA", dict(scoring._CRITERIA))
    monkeypatch.setattr(scoring, "_BUILT_IN", set(scoring._BUILT_IN))

    def points(*names: str) -> None:
        found = [EntryPoint(name, f"my_package.criteria:{name}", scoring.PLUGIN_GROUP) for name in names]
        monkeypatch.setattr(scoring, "entry_points", lambda group: found if group == scoring.PLUGIN_GROUP else [])

    points()
    return points


def test_registering_a_second_function_for_a_criterion_is_refused(registry):
    with pytest.raises(DuplicateRegistration, match=r"^criterion 'l1' is already onnxprune\.graphops\.scoring\."):
        scoring.register_criterion("l1")(lambda dep: {})


def test_an_entry_point_named_like_a_built_in_criterion_is_refused(registry):
    registry("l2")

    with pytest.raises(DuplicateRegistration, match=r"entry point 'l2 = my_package\.criteria:l2'"):
        scoring.available_criteria()


def test_two_entry_points_of_one_name_are_refused(registry):
    registry("saliency", "saliency")

    with pytest.raises(DuplicateRegistration, match="criterion 'saliency' is registered twice"):
        scoring.get_criterion("saliency")


def test_a_new_name_registers(registry):
    registry("saliency")

    scoring.register_criterion("mine")(lambda dep: {})

    assert {"l1", "l2", "random", "mine", "saliency"} <= scoring.available_criteria()
