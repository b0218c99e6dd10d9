"""Next-basket protocol, metrics, baselines and the two-stage ranker on planted data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.compute as pc
import pytest
import scipy.sparse as sp

from omnirec.domain.clock import DAY
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Col
from omnirec.training.baskets import Baskets, next_basket_split
from omnirec.training.config import TrainConfig
from omnirec.training.metrics import bootstrap_ci, next_basket_per_member
from omnirec.training.models.factorization import ALSRecommender
from omnirec.training.models.frequency import TIFUKNN, GPTopFreq, GTopFreq, PTopFreq, main_column, tifu_vectors
from omnirec.training.next_basket import (
    MethodResult,
    evaluate_methods,
    list_heads,
    next_basket_gate,
    score_lists,
    served_results,
)
from omnirec.training.ranker import (
    FEATURES,
    Intent,
    RankerData,
    build_context,
    by_member_item,
    candidates,
    fit_ranker,
    intent_lists,
    top_lists,
)
from omnirec.training.weighting import collaborative_train_set
from tests.training.planted import planted_interactions

CONFIG = TrainConfig(als={"factors": 8, "regularization": 1.0, "alpha": 3.0, "iterations": 5},
                     ranker={"windows": 2, "window_days": 14, "n_estimators": 60, "n_jobs": 1})
PARAMS = CONFIG.ranker


@pytest.fixture(scope="module")
def planted() -> tuple[Interactions, Baskets]:
    interactions = planted_interactions()
    return interactions, Baskets.from_interactions(interactions)


def test_split_targets_are_each_members_first_basket_after_the_cutoff(planted):
    _, baskets = planted
    split = next_basket_split(baskets, 14)
    assert split.history.day.max() <= split.cut_day
    day_of = {}
    for m, d in zip(baskets.member, baskets.day, strict=True):
        if d > split.cut_day:
            day_of[m] = min(day_of.get(m, d), d)
    assert list(split.members) == sorted(day_of)
    for row, member in enumerate(split.members[:10]):
        expected = np.unique(baskets.item[(baskets.member == member) & (baskets.day == day_of[member])])
        assert list(split.targets[row].indices) == list(expected)


def test_metrics_split_repeat_and_explore():
    targets = sp.csr_matrix(np.array([[1, 1, 0, 1], [0, 0, 1, 0]], np.float32))
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [1, 1, 0, 0]], np.float32))
    top = np.array([[0, 2], [2, -1]])
    out = next_basket_per_member(top, targets, seen)
    assert out["recall@2"].tolist() == pytest.approx([1 / 3, 1.0])
    assert out["repeat_recall@2"][0] == 1.0 and np.isnan(out["repeat_recall@2"][1])
    assert out["explore_recall@2"].tolist() == pytest.approx([0.0, 1.0])
    lo, hi = bootstrap_ci(np.array([0.0, 1.0] * 50), 200)
    assert lo < 0.5 < hi


def test_frequency_baselines(planted):
    _, baskets = planted
    split = next_basket_split(baskets, 14)
    g, p, gp = (r.means["recall@10"] for r in evaluate_methods([GTopFreq(), PTopFreq(), GPTopFreq()], split,
                                                               n_boot=50))
    assert p > g and gp >= p
    top = PTopFreq().fit(split.history).recommend(split.members, 50)
    bought = split.history.counts()[split.members].toarray() > 0
    listed = np.take_along_axis(bought, np.maximum(top, 0), axis=1)
    assert listed[top >= 0].all() and ((top >= 0).sum(axis=1) == bought.sum(axis=1)).all()


def test_tifu_vectors_follow_the_reference_grouping():
    # One member, 4 baskets of one item each; 3 groups: sizes 1, 1, 2 (the last group one longer).
    lines = np.arange(4)
    baskets = Baskets._build(np.zeros(4, np.int64), lines, lines, np.full(4, -1), np.ones(4), np.zeros(0, str), 1, 4)
    vec = tifu_vectors(baskets, within_decay=0.9, group_decay=0.6, n_groups=3).toarray()[0]
    within = 0.9 ** np.array([3, 2, 1, 0])
    group = np.array([0.6 ** 2, 0.6, 0.5, 0.5])
    assert vec == pytest.approx(within * group / 3)
    model = TIFUKNN(n_neighbors=1, alpha=0.2).fit(baskets)
    assert model.scores(np.array([0]))[0] == pytest.approx(vec, rel=1e-5)


@pytest.fixture(scope="module")
def ranked(planted):
    interactions, baskets = planted
    split = next_basket_split(baskets, 14)
    data = RankerData(baskets, interactions, CONFIG)
    model = fit_ranker(data, split.cut_day)
    ctx = data.context(split.cut_day)
    return split, model, candidates(ctx, split.members, PARAMS), intent_lists(model, ctx, split.members, 20)


def test_candidate_features_read_at_the_pairs_equal_the_dense_rows(planted, ranked):
    split = ranked[0]
    interactions, baskets = planted
    ctx = RankerData(baskets, interactions, CONFIG).context(split.cut_day)
    cands = candidates(ctx, split.members, PARAMS)
    row = np.searchsorted(split.members, cands.member)
    dense = {"p_count": ctx.counts[split.members].toarray(), "p_tifu": ctx.tifu.vectors[split.members].toarray(),
             "knn": ctx.tifu.neighbour_mean(split.members).toarray(),
             "lift_last": (ctx.last_basket[split.members] @ ctx.lift).toarray(),
             "in_last_basket": ctx.last_basket[split.members].toarray(),
             "als": ctx.als.member_factors[split.members] @ ctx.als.item_factors.T,
             "store_pop": ctx.store.scores(split.members)}
    for name, matrix in dense.items():
        assert cands.column(name) == pytest.approx(matrix[row, cands.item], rel=1e-4, abs=1e-6), name
    # every bought item is a candidate (fewer than `personal` per member here), and so is each member's
    # main store's best pool item
    bought = dense["p_count"] > 0
    listed = np.zeros_like(bought)
    listed[row, cands.item] = True
    assert (listed | ~bought).all()
    store_best = ctx.store_top[ctx.store.main_store[split.members], 0]
    assert listed[np.arange(len(split.members)), store_best].all()


def test_rankers_fitted_side_by_side_in_processes_equal_one_process(planted):
    interactions, baskets = planted
    split = next_basket_split(baskets, 14)
    models = [fit_ranker(RankerData(baskets, interactions, CONFIG.model_copy(update={"ranker": PARAMS.model_copy(
        update={"processes": n})})), split.cut_day) for n in (1, 2)]
    assert models[0] is not None and models[1] is not None
    for name in ("mixed", "discover"):
        one, two = (getattr(m, name) for m in models)
        assert (one is None) == (two is None)
        assert one is None or one.model_to_string() == two.model_to_string()


def test_one_sort_serves_every_cut_off(planted):
    _, baskets = planted
    order = np.lexsort((baskets.day, baskets.item, baskets.member))
    for cut in (int(baskets.day.min()) + 20, int(baskets.day.max()) - 14, int(baskets.day.max())):
        history = baskets.until(cut)
        assert (by_member_item(baskets, cut, order) == np.lexsort((history.day, history.item,
                                                                    history.member))).all()


def test_main_column_is_scipys_argmax_with_ties_to_the_lowest_column():
    matrix = sp.random(500, 12, density=0.3, format="csr", random_state=4)
    matrix.data = np.floor(matrix.data * 3) + 1.0  # few distinct values: many ties
    expected = np.where(matrix.getnnz(axis=1) > 0, np.asarray(matrix.argmax(axis=1)).ravel(), -1)
    assert (main_column(matrix) == expected).all() and (expected == -1).any()


def test_ranker_beats_its_best_single_source(ranked):
    """The served MIXED list (`intent_lists`, what the bundle holds) against each source's own top 10."""
    split, _, cands, lists = ranked
    ours = score_lists("omnirec", lists.items[Intent.MIXED][:, :10], split, 50)
    sources = {name: top_lists(cands, cands.column(name), split.members, 10)[0]
               for name in ("p_tifu", "p_count", "knn", "als", "lift_last", "store_pop", "pop_recent")}
    best = max(score_lists(n, t, split, 50).means["recall@10"] for n, t in sources.items())
    assert ours.means["recall@10"] > best + 0.05


def test_publish_gate_passes_the_served_list_where_it_wins(ranked):
    """On planted repeat cycles the served MIXED list clears every frequency baseline (the gate publishes)."""
    split, _, _, lists = ranked
    served = served_results(list_heads(lists, 10), split, 200)
    baselines = evaluate_methods([GTopFreq(), PTopFreq(), GPTopFreq(), TIFUKNN()], split, n_boot=200)
    gate = next_basket_gate(served + baselines, "omnirec", ("recall@10", "ndcg@10"), n_boot=200)
    assert gate.passed, gate.reason()
    assert {c["rival"] for c in gate.checks.values()} <= {"GP-TopFreq", "P-TopFreq", "TIFU-KNN"}


def test_buy_again_lists_due_items_first(ranked):
    """Staples bought on fixed cycles: the items due at the next trip come first, not the most frequent ones."""
    split, _, _, lists = ranked
    top = lists.items[Intent.BUY_AGAIN][:, :3]
    by_count = PTopFreq().fit(split.history).recommend(split.members, 3)
    first_hit = np.asarray(split.targets[np.arange(len(top)), top[:, 0]]).ravel()
    count_hit = np.asarray(split.targets[np.arange(len(top)), by_count[:, 0]]).ravel()
    assert first_hit.mean() > 0.9 > count_hit.mean() + 0.3
    assert split.seen[np.arange(len(top))[:, None], top].toarray().all()


def test_discover_never_returns_a_bought_item(ranked):
    split, _, _, lists = ranked
    top = lists.items[Intent.DISCOVER]
    bought = split.history.counts()[split.members].toarray() > 0
    assert (top >= 0).any()
    assert not np.take_along_axis(bought, np.maximum(top, 0), axis=1)[top >= 0].any()


def test_features_ignore_events_after_the_cutoff(planted):
    interactions, baskets = planted
    cut = next_basket_split(baskets, 14).cut_day
    members = np.arange(20)
    full = candidates(build_context(baskets, interactions, CONFIG, cut, PARAMS), members, PARAMS)
    ts = interactions.events[Col.TS]
    past = Interactions.from_events(interactions.events.filter(pc.less(ts, (cut + 1) * DAY)),
                                    members=interactions.members, items=interactions.items)
    only_past = candidates(build_context(Baskets.from_interactions(past), past, CONFIG, cut, PARAMS), members, PARAMS)
    assert np.array_equal(full.item, only_past.item)
    np.testing.assert_allclose(full.features, only_past.features, rtol=1e-5, equal_nan=True)
    assert len(FEATURES) == full.features.shape[1]


def _result(name: str, recall: np.ndarray) -> MethodResult:
    per = {"recall@10": recall, "ndcg@10": recall}
    return MethodResult(name, 10, len(recall), {k: float(v.mean()) for k, v in per.items()}, {}, per)


def test_publish_gate_refuses_what_does_not_clear_the_strongest_baseline():
    rng = np.random.default_rng(0)
    base = rng.random(500)
    strong = _result("GP-TopFreq", base + 0.05)
    weak = _result("G-TopFreq", base - 0.2)
    metrics = ("recall@10", "ndcg@10")
    # beats the weak baseline by far, but only ties the strongest: refused, and the reason names the rival
    tie = next_basket_gate([_result("omnirec", base + 0.05 + rng.normal(0, 0.01, 500)), strong, weak], "omnirec",
                           metrics, n_boot=200)
    assert not tie.passed and "GP-TopFreq" in tie.reason()
    clear = next_basket_gate([_result("omnirec", base + 0.1), strong, weak], "omnirec", metrics, n_boot=200)
    assert clear.passed
    strict = next_basket_gate([_result("omnirec", base + 0.1), strong, weak], "omnirec", metrics, margin=0.06,
                              n_boot=200)
    assert not strict.passed


def test_intent_lists_scored_in_forked_processes_equal_one_process(planted, ranked):
    """Spreading the batches over worker processes changes no list (the bundle's lists at a million members)."""
    interactions, baskets = planted
    split, model, _, _ = ranked
    ctx = RankerData(baskets, interactions, CONFIG).context(split.cut_day)
    one, two = (intent_lists(dataclasses.replace(model, params=model.params.model_copy(
        update={"batch": 7, "processes": processes})), ctx, split.members, 20) for processes in (1, 2))
    assert (one.items[Intent.MIXED] >= 0).sum() > 20 * len(split.members) // 2
    for intent in Intent:
        assert np.array_equal(one.items[intent], two.items[intent])
        assert np.array_equal(one.scores[intent], two.scores[intent])


def test_compiled_rankers_score_as_lightgbm(planted, ranked):
    """Above `compile_members` the lists come from the lleaves-compiled boosters: the same lists."""
    interactions, baskets = planted
    split, model, _, _ = ranked
    ctx = RankerData(baskets, interactions, CONFIG).context(split.cut_day)
    plain, compiled = (intent_lists(dataclasses.replace(model, params=model.params.model_copy(
        update={"compile_members": n, "processes": 2, "batch": 50})), ctx, split.members, 20)
        for n in (10**9, 1))
    for intent in Intent:
        assert np.array_equal(plain.items[intent], compiled.items[intent])
        assert np.allclose(plain.scores[intent], compiled.scores[intent], rtol=1e-5, atol=1e-6)


def test_fold_in_solves_the_members_the_fit_found(planted):
    """Member factors solved against fitted item factors match the fit's own (it converged on the same data)."""
    interactions, baskets = planted
    data = collaborative_train_set(interactions, CONFIG, int(baskets.day.max()))
    als = ALSRecommender(seed=0, **CONFIG.als.model_copy(update={"iterations": 30}).kwargs())
    als.fit(data)
    folded = als.fold_in(data)
    active = np.diff(data.matrix.indptr) > 0
    a, b = als.member_factors[active], folded.member_factors[active]
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert np.median(cosine) > 0.99 and folded.item_factors is als.item_factors


def test_the_ranker_windows_share_one_als_fit(planted, monkeypatch):
    """Only the earliest window fits ALS; the later ones fold their members in (one fit, not one each)."""
    interactions, baskets = planted
    fits = []
    original = ALSRecommender.fit
    monkeypatch.setattr(ALSRecommender, "fit", lambda self, data: fits.append(data) or original(self, data))
    data = RankerData(baskets, interactions, CONFIG)
    cut = next_basket_split(baskets, 14).cut_day
    assert fit_ranker(data, cut) is not None
    assert len(fits) == 1 and data.window_als is not None
    assert int(fits[0].interactions.events[Col.TS].to_numpy()[fits[0].rows].max()) // DAY <= cut - 2 * 14
