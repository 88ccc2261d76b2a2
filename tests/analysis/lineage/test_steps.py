"""The lineage's steps: their order, and the overrides each method is trained with."""
import pytest

from detkit.analysis.lineage.steps import METHODS, STEPS, preset_of, step, train_overrides
from detkit.engine.config import compose_run_config


def test_the_five_methods_in_the_papers_order():
    assert METHODS == ("rcnn", "sppnet", "overfeat", "fast_rcnn", "faster_rcnn")
    assert all(s.idea.endswith(".") and s.title and s.paper for s in STEPS)
    assert [s.search for s in STEPS] == [True, True, False, True, False]


def test_budget_goes_to_the_recipes_clock():
    assert train_overrides("rcnn", [], budget_s=90, proposals=None)[-1] == "method.stages.finetune.max_time_s=90"
    assert train_overrides("faster_rcnn", [], budget_s=90, proposals=None)[-1] == "solver.max_time_s=90"
    with pytest.raises(ValueError, match="budget of sppnet"):
        train_overrides("sppnet", [], budget_s=0, proposals=None)


def test_same_proposals_for_every_method_that_takes_them():
    for s in STEPS:
        args = train_overrides(s.method, [], budget_s=10, proposals=123)
        assert ("data.proposals.max_proposals=123" in args) == s.search
        assert ("data.proposals.base_k=150" in args) == s.search


def test_user_overrides_win_and_method_scoped_ones_reach_one_method():
    user = ["data=bccd", "method.model.scales=[1.0]", "rcnn:method.model.context=0", "method=rcnn"]
    over = train_overrides("overfeat", user, budget_s=10, proposals=None)
    assert over.index("method.model.scales=[1.0]") > over.index("method.model.scales=[1.0,0.7,0.5]")
    assert "method.model.context=0" not in over and over.count("method=overfeat") == 1
    assert "method=rcnn" not in over  # the lineage decides the method of each step
    assert "method.model.context=0" in train_overrides("rcnn", user, budget_s=10, proposals=None)


def test_paper_preset_gets_only_the_budget():
    args = train_overrides("sppnet", ["preset=paper", "data=bccd"], budget_s=60, proposals=None)
    assert args == ["method=sppnet", "preset=paper", "data=bccd", "method.stages.finetune.max_time_s=60"]
    assert preset_of(["preset=paper"]) == "paper" and preset_of([]) == "cpu"


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_every_step_composes_into_a_run_config(preset):
    # the small-CPU settings name real config keys of each method
    for s in STEPS:
        conf = compose_run_config(train_overrides(s.method, [f"preset={preset}"], budget_s=30, proposals=200))
        assert conf["method"]["name"] == s.method
        clock = conf["method"]["stages"]["finetune"] if s.recipe == "stages" else conf["solver"]
        assert clock["max_time_s"] == 30
        if s.search:
            assert conf["data"]["proposals"]["max_proposals"] == 200


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'yolo'"):
        step("yolo")
