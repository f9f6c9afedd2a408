"""Training time to a validation Hit@1, from learning curves."""

import pytest

from allmrec.experiment.efficiency import time_to_reach, timeline


def test_timeline_pairs_each_point_with_its_training_seconds_after_an_offset():
    state = {"curve": [[0, 0.1, 0.3], [10, 0.25, 0.4], [20, 0.2, 0.45]], "curve_seconds": [[0, 0.0], [10, 30.0], [20, 61.5]]}
    assert timeline(state, offset=100.0) == [(100.0, 0.1), (130.0, 0.25), (161.5, 0.2)]
    with pytest.raises(ValueError, match="steps \\[20\\]"):
        timeline({"curve": state["curve"], "curve_seconds": state["curve_seconds"][:2]})


def test_time_to_reach_is_the_first_point_at_or_above_the_target():
    points = [(130.0, 0.25), (100.0, 0.1), (161.5, 0.2), (200.0, 0.3)]
    assert time_to_reach(points, 0.1) == 100.0
    assert time_to_reach(points, 0.2) == 130.0  # the first time, not a later dip back to 0.2
    assert time_to_reach(points, 0.25) == 130.0
    assert time_to_reach(points, 0.26) == 200.0
    assert time_to_reach(points, 0.31) is None
    assert time_to_reach([], 0.0) is None
