"""Two-stage next-basket recommender: candidates from several sources, ranked by LightGBM `lambdarank`.

Stage one gathers, for each member, the union of: their own items by time-decayed frequency (TIFU vector),
the items of their nearest neighbours (TIFU-KNN), ALS, items bought with their last basket (lift), their
main store's and the whole chain's bestsellers. Stage two scores each (member, item) pair from features
known at the cut-off only: personal frequency and recency, days since the member last bought the item over
their own interval for it and over the item's repurchase cycle, how overdue the member's next trip is, the
sources' scores, popularity and its trend, price. The ranker is trained on windows shifted back in time
(`fit_ranker`): features at an earlier cut-off, labels from the basket after it, never later than the
evaluation cut-off, so no label or feature sees the test window.

Three lists come out of one candidate set (`Intent`): MIXED (everything, the main ranker), BUY_AGAIN (items
bought before, by the main ranker, which orders them by how due they are), DISCOVER (never bought, by a
ranker trained on never-bought targets only). `intent_lists` computes them for any set of members in
batches; `omnirec train` writes its output for every member into the bundle and evaluates the same
function's output at the evaluation cut-off, so what is judged is what is served.

At scale the work is bounded by `TrainConfig.ranker`: each window learns from at most `train_members`
sampled members, at most `max_pool_items` items are candidates for members who never bought them,
neighbours are searched among `knn_pool` members, and members are scored `batch` at a time.
"""

from __future__ import annotations

import multiprocessing
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Intent
from omnirec.training.baskets import Baskets, next_basket_split
from omnirec.training.complements import top_per_row
from omnirec.training.config import RankerSettings, TrainConfig
from omnirec.training.models.factorization import ALSRecommender, FactorizationRecommender
from omnirec.training.models.frequency import TIFUKNN, StorePopularity, global_counts
from omnirec.training.promotions import PROMOTION_FEATURES, Promotions, PromotionWeek, promotion_columns, promotion_week
from omnirec.training.weighting import collaborative_train_set

T = TypeVar("T")
R = TypeVar("R")

NEVER = 10_000.0
"""Days since a purchase that never happened (LightGBM only needs it larger than any real gap)."""

FEATURES = (
    "bought", "p_count", "p_share", "p_tifu", "days_since_item", "p_interval", "due_personal", "due_item",
    "in_last_basket", "m_baskets", "m_days_since_last", "m_gap", "m_overdue", "knn", "als", "lift_last",
    "pop_log", "pop_recent", "pop_trend", "store_pop", "i_repeat_rate", "i_cycle", "i_buyers", "price",
    *PROMOTION_FEATURES,
)


def by_member_item(baskets: Baskets, cut_day: int, order: np.ndarray | None = None) -> np.ndarray:
    """The lines of `baskets.until(cut_day)` ordered by member, item, day. `order`, that order for all of
    `baskets`, is filtered instead of sorting again (one sort serves every cut-off's context)."""
    if order is None:
        history = baskets.until(cut_day)
        return np.lexsort((history.day, history.item, history.member))
    kept = baskets.day <= cut_day
    position = np.cumsum(kept) - 1
    return position[order[kept[order]]]


def item_stats(history: Baskets, cut_day: int, order: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-item popularity, recent popularity and trend, repurchase rate and cycle (median days), price.
    `order`: the history's lines by member, item, day (`by_member_item`)."""
    n = history.n_items
    counts = global_counts(history)
    recent = np.bincount(history.item[history.day > cut_day - 28], minlength=n).astype(np.float32)
    before = np.bincount(history.item[(history.day > cut_day - 84) & (history.day <= cut_day - 28)],
                         minlength=n).astype(np.float32)
    order = by_member_item(history, cut_day) if order is None else order
    member, item, day = history.member[order], history.item[order], history.day[order]
    again = (member[1:] == member[:-1]) & (item[1:] == item[:-1])
    gaps = (day[1:] - day[:-1])[again].astype(np.float64)
    gap_item = item[1:][again]
    cycle = np.full(n, np.nan)
    if len(gaps):
        by = np.lexsort((gaps, gap_item))
        gap_item, gaps = gap_item[by], gaps[by]
        starts = np.searchsorted(gap_item, np.arange(n))
        ends = np.searchsorted(gap_item, np.arange(n), side="right")
        has = ends > starts
        cycle[has] = gaps[(starts[has] + ends[has] - 1) // 2]
    pairs = history.counts().tocsc()
    buyers = np.diff(pairs.indptr).astype(np.float32)
    repeaters = np.bincount(np.repeat(np.arange(n), np.diff(pairs.indptr))[pairs.data >= 2], minlength=n)
    price_sum = np.bincount(history.item, weights=history.price, minlength=n)
    return {"pop_log": np.log1p(counts), "pop_recent": np.log1p(recent),
            "pop_trend": (recent / 28.0 + 0.01) / (before / 56.0 + 0.01), "i_repeat_rate": repeaters /
            np.maximum(buyers, 1.0), "i_cycle": cycle, "i_buyers": np.log1p(buyers),
            "price": price_sum / np.maximum(counts, 1.0)}


def basket_lift(history: Baskets, pool: np.ndarray, per_item: int, min_count: int = 2) -> sp.csr_matrix:
    """Item x item lift between `pool` items over the history's baskets (pairs in < `min_count` baskets dropped)."""
    baskets = sp.csr_matrix((np.ones(len(history), np.float32), (history.basket, history.item)),
                            shape=(history.n_baskets, history.n_items))[:, pool]
    together = (baskets.T @ baskets).tocsr()
    together.setdiag(0)
    together.data[together.data < min_count] = 0
    together.eliminate_zeros()
    counts = global_counts(history)[pool]
    coo = top_per_row(together, 10 * per_item).tocoo()
    lift = coo.data * history.n_baskets / (counts[coo.row] * counts[coo.col])
    best = top_per_row(sp.csr_matrix((lift.astype(np.float32), (coo.row, coo.col)), shape=together.shape),
                       per_item).tocoo()
    return sp.csr_matrix((best.data, (pool[best.row], pool[best.col])), shape=(history.n_items, history.n_items))


@dataclass(frozen=True)
class Context:
    """Everything candidates and features need, computed from the history up to `cut_day` only."""

    history: Baskets
    cut_day: int
    counts: sp.csr_matrix
    first_day: sp.csr_matrix
    last_day: sp.csr_matrix
    last_basket: sp.csr_matrix
    member_baskets: np.ndarray
    member_last: np.ndarray
    member_gap: np.ndarray
    items: dict[str, np.ndarray]
    tifu: TIFUKNN
    store: StorePopularity
    als: FactorizationRecommender
    lift: sp.csr_matrix
    pool: np.ndarray
    """Items every member may get as a candidate (in at least `min_item_baskets` baskets, the
    `max_pool_items` most popular of them)."""
    pool_position: np.ndarray
    """Per item: its position in `pool`, -1 outside it."""
    knn_pool: sp.csr_matrix
    """The TIFU neighbours' vectors over the `pool` items only (neighbours x pool): one sparse product gives
    every member's neighbour mean as a dense row over the pool."""
    knn_rare: sp.csc_matrix
    """The TIFU neighbours' vectors by column, for the neighbour mean at the bought items outside the pool."""
    pool_factors: np.ndarray
    """ALS item factors of the `pool` items (the one dense source: members' scores over the pool)."""
    store_top: np.ndarray
    """`store_bestsellers`: each store's `store` best pool items, the chain's in the last row."""
    store_keys: np.ndarray
    """`store.table`'s (store, item) keys, for reading the store popularity of candidate pairs."""
    overall_top: np.ndarray
    """The chain's `overall` recent bestsellers in the pool (the same for every member)."""
    promotions: PromotionWeek | None = None
    """Promotions running in the `promotion_days` after the cut-off (`training.promotions`)."""


def build_context(baskets: Baskets, interactions: Interactions, config: TrainConfig, cut_day: int,
                  params: RankerSettings, seed: int = 0, als: FactorizationRecommender | None = None,
                  promotions: Promotions | None = None, fold_from: ALSRecommender | None = None,
                  order: np.ndarray | None = None) -> Context:
    """Fit the sources and gather statistics on `baskets` up to `cut_day`; nothing later is read (but the
    promotions planned for the days after it: `training.promotions`).

    `als`, when given, replaces the ALS fit: the caller vouches that it saw no event after `cut_day` (the
    pipeline passes its own ALS, fitted on the same events, to save a fit at scale). Else `fold_from`, an
    ALS fitted on events up to an earlier day, gives its item factors and the member factors are solved on
    the events up to `cut_day` (`ALSRecommender.fold_in`); else ALS is fitted here. `order`: all of
    `baskets`' lines by member, item, day (`by_member_item`), sorted once for every context."""
    history = baskets.until(cut_day)
    shape = (history.n_members, history.n_items)
    day = history.day.astype(np.float32) - cut_day - 1.0  # negative; 0 never stored, so sparse max/min work
    order = by_member_item(baskets, cut_day, order)
    m, i, d = history.member[order], history.item[order], day[order]
    end = np.ones(len(m), bool)
    end[:-1] = (m[1:] != m[:-1]) | (i[1:] != i[:-1])
    start = np.ones(len(m), bool)
    start[1:] = end[:-1]
    last = sp.csr_matrix((d[end], (m[end], i[end])), shape=shape)
    first = sp.csr_matrix((d[start], (m[start], i[start])), shape=shape)
    basket_member, basket_day = history.basket_member(), history.basket_day()
    n_baskets = np.bincount(basket_member, minlength=history.n_members).astype(np.float32)
    member_last = np.full(history.n_members, -np.inf)
    np.maximum.at(member_last, basket_member, basket_day.astype(np.float64))
    member_first = np.full(history.n_members, np.inf)
    np.minimum.at(member_first, basket_member, basket_day.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = np.where(n_baskets > 1, (member_last - member_first) / np.maximum(n_baskets - 1, 1), np.nan)
    in_last = history.day == member_last[history.member]
    last_basket = sp.csr_matrix((np.ones(int(in_last.sum()), np.float32), (history.member[in_last],
                                                                             history.item[in_last])), shape=shape)
    popularity = global_counts(history)
    pool = np.flatnonzero(popularity >= params.min_item_baskets)
    if len(pool) > params.max_pool_items:
        pool = np.sort(pool[np.argsort(-popularity[pool], kind="stable")[:params.max_pool_items]])
    if als is None and fold_from is not None:
        als = fold_from.fold_in(collaborative_train_set(interactions, config, cut_day))
    elif als is None:
        als = ALSRecommender(seed=seed, **config.als.kwargs())
        with threadpool_limits(1, "blas"):
            als.fit(collaborative_train_set(interactions, config, cut_day))
    items = item_stats(history, cut_day, order)
    store = StorePopularity().fit(history)
    pool_position = np.full(history.n_items, -1, np.int64)
    pool_position[pool] = np.arange(len(pool))
    tifu = TIFUKNN(max_pool=params.knn_pool, seed=seed).fit(history)
    return Context(history=history, cut_day=cut_day, counts=_sorted(history.counts()), first_day=_sorted(first),
                   last_day=_sorted(last), last_basket=_sorted(last_basket), member_baskets=n_baskets,
                   member_last=member_last, member_gap=gap, items=items,
                   tifu=tifu, store=store, als=als, lift=basket_lift(history, pool, 50), pool=pool,
                   pool_position=pool_position, knn_pool=sp.csr_matrix(tifu.pool[:, pool]),
                   knn_rare=sp.csc_matrix(tifu.pool),
                   pool_factors=np.ascontiguousarray(als.item_factors[pool]),
                   store_top=store_bestsellers(store, pool, params.store), store_keys=_keys(_sorted(store.table)),
                   overall_top=ranked_pool(items["pop_recent"], pool, params.overall),
                   promotions=None if promotions is None else
                   promotion_week(promotions, history, cut_day, params.promotion_days))


def _keys(matrix: sp.csr_matrix) -> np.ndarray:
    """row * n_cols + column of each stored entry, ascending (`matrix` has sorted indices)."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def _sorted(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """`matrix` in canonical form (sorted column indices per row, no duplicates), so `_keys` is ascending."""
    matrix = sp.csr_matrix(matrix)
    if not matrix.has_canonical_format:
        matrix.sum_duplicates()
    return matrix


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == query] per query key (0 where `keys`, ascending, lacks it): a sparse matrix's cells
    at (row, column) pairs by one binary search, instead of dense rows."""
    if not len(keys):
        return np.zeros(len(query), np.float32)
    at = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[at] == query, values[at], 0).astype(np.float32)


def _top_keys_sparse(scores: sp.csr_matrix, n: int) -> np.ndarray:
    """Keys (row * width + column) of each row's n best positive finite stored entries (only stored
    entries can be positive): one sort of the stored entries instead of a partition of dense rows."""
    row = np.repeat(np.arange(scores.shape[0], dtype=np.int64), np.diff(scores.indptr))
    positive = np.isfinite(scores.data) & (scores.data > 0)
    row, col, data = row[positive], scores.indices[positive].astype(np.int64), scores.data[positive]
    order = np.lexsort((-data, row))
    row, col = row[order], col[order]
    keep = np.arange(len(row)) - np.searchsorted(row, row) < n
    return row[keep] * scores.shape[1] + col[keep]


def _top_keys_dense(scores: np.ndarray, columns: np.ndarray, n: int, width: int) -> np.ndarray:
    """Keys of each row's n best positive finite scores, `scores` holding the items `columns`."""
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.zeros(0, np.int64)
    best = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    value = np.take_along_axis(scores, best, axis=1)
    ok = np.isfinite(value) & (value > 0)
    rows = np.broadcast_to(np.arange(len(scores), dtype=np.int64)[:, None], best.shape)
    return rows[ok] * width + columns[best[ok]]


def ranked_pool(scores: np.ndarray, pool: np.ndarray, n: int) -> np.ndarray:
    """The n pool items with the best positive scores (`scores` over every item), best first."""
    values = scores[pool]
    order = np.argsort(-values, kind="stable")[:n]
    return pool[order[values[order] > 0]]


def store_bestsellers(store: StorePopularity, pool: np.ndarray, n: int) -> np.ndarray:
    """Each store's n bestselling pool items (ties by overall popularity, -1 pads), then, in the last row,
    the chain's (for members without a main store): the store source is the same list for every member of
    a store, so it is ranked once per context instead of once per member over dense rows."""
    out = np.full((store.table.shape[0] + 1, n), -1, np.int64)
    for row in range(store.table.shape[0]):
        scores = store.overall.astype(np.float64)
        line = store.table[row]
        scores[line.indices] += line.data
        best = ranked_pool(scores, pool, n)
        out[row, :len(best)] = best
    best = ranked_pool(store.overall, pool, n)
    out[-1, :len(best)] = best
    return out


@dataclass(frozen=True)
class Candidates:
    """(member, item) pairs, grouped by member in `members` order, and their feature rows."""

    member: np.ndarray
    item: np.ndarray
    features: np.ndarray

    def column(self, name: str) -> np.ndarray:
        return self.features[:, FEATURES.index(name)]


def candidates(ctx: Context, members: np.ndarray, params: RankerSettings) -> Candidates:
    """Union of every source's top items per member, with one feature row per pair."""
    parts: list[Candidates] = []
    for start in range(0, len(members), params.batch):
        parts.append(_candidate_batch(ctx, members[start:start + params.batch], params))
    return Candidates(member=np.concatenate([p.member for p in parts]), item=np.concatenate([p.item for p in parts]),
                      features=np.concatenate([p.features for p in parts]))


def _candidate_batch(ctx: Context, members: np.ndarray, params: RankerSettings) -> Candidates:
    """Each source's top items as sparse (row, item) keys, their union, then every feature read at the
    union's pairs by binary search in the sparse rows: no dense member x item rows but ALS's over the pool.

    Members may get the pool's items and the items they bought themselves; sources are ranked over those.
    """
    width = ctx.counts.shape[1]
    personal = _sorted(ctx.counts[members])
    personal_keys = _keys(personal)
    own = _sorted(ctx.tifu.vectors[members])
    lift = _sorted(ctx.last_basket[members] @ ctx.lift)
    # the neighbour mean, dense over the pool and the batch's bought items outside it (`rare`), which only
    # their buyers may get
    entry_rows = np.repeat(np.arange(len(members), dtype=np.int64), np.diff(personal.indptr))
    outside = ctx.pool_position[personal.indices] < 0
    rare = np.unique(personal.indices[outside])
    pick = ctx.tifu.neighbours(members)
    knn = np.hstack([(pick @ ctx.knn_pool).toarray(), (pick @ ctx.knn_rare[:, rare]).toarray()])
    owned = np.zeros((len(members), len(rare)), bool)
    owned[entry_rows[outside], np.searchsorted(rare, personal.indices[outside])] = True
    knn[:, len(ctx.pool):] *= owned
    knn_items = np.concatenate([ctx.pool, rare])
    member_factors = ctx.als.member_factors[members]
    als_pool = member_factors @ ctx.pool_factors.T
    store_of = ctx.store.main_store[members]
    rows = np.arange(len(members), dtype=np.int64)[:, None] * width
    store_top = ctx.store_top[store_of]  # row -1: the chain's list, for members without a main store
    store_keys = (rows + store_top)[store_top >= 0]
    overall_keys = (rows + ctx.overall_top[None, :]).ravel()
    keys = np.unique(np.concatenate([
        _top_keys_sparse(own, params.personal), _top_keys_sparse(lift, params.lift),
        _top_keys_dense(knn, knn_items, params.knn, width),
        _top_keys_dense(als_pool, ctx.pool, params.als, width), store_keys, overall_keys]))
    row, item = keys // width, keys % width
    knn_column = np.where(ctx.pool_position[item] >= 0, ctx.pool_position[item],
                          len(ctx.pool) + np.searchsorted(rare, item))
    n_b = ctx.member_baskets[members][row]
    n_item = _lookup(personal_keys, personal.data, keys)
    bought = n_item > 0
    last_basket, last_day, first_day = (_sorted(m[members]) for m in (ctx.last_basket, ctx.last_day, ctx.first_day))
    last_seen = _lookup(_keys(last_day), last_day.data, keys)
    first_seen = _lookup(_keys(first_day), first_day.data, keys)
    store = store_of[row]
    has_store = store >= 0
    store_pop = ctx.store.overall[item].astype(np.float32)
    store_pop[has_store] += _lookup(ctx.store_keys, ctx.store.table.data, store[has_store] * width + item[has_store])
    since_item = np.where(bought, -last_seen - 1.0, NEVER)
    with np.errstate(invalid="ignore", divide="ignore"):
        interval = np.where(n_item > 1, (last_seen - first_seen) / np.maximum(n_item - 1, 1), np.nan)
        m_since = ctx.cut_day - ctx.member_last[members][row]
        columns = {
            "bought": bought.astype(np.float32), "p_count": n_item, "p_share": n_item / n_b,
            "p_tifu": _lookup(_keys(own), own.data, keys), "days_since_item": since_item, "p_interval": interval,
            "due_personal": since_item / interval, "due_item": since_item / ctx.items["i_cycle"][item],
            "in_last_basket": _lookup(_keys(last_basket), last_basket.data, keys), "m_baskets": n_b,
            "m_days_since_last": m_since, "m_gap": ctx.member_gap[members][row],
            "m_overdue": m_since / ctx.member_gap[members][row], "knn": knn[row, knn_column],
            "als": np.einsum("ij,ij->i", member_factors[row], ctx.als.item_factors[item]),
            "lift_last": _lookup(_keys(lift), lift.data, keys), "store_pop": store_pop,
            **{name: ctx.items[name][item] for name in ("pop_log", "pop_recent", "pop_trend", "i_repeat_rate",
                                                        "i_cycle", "i_buyers", "price")},
            **promotion_columns(ctx.promotions, members[row], item),
        }
    features = np.column_stack([np.asarray(columns[name], dtype=np.float32) for name in FEATURES])
    return Candidates(member=members[row], item=item.astype(np.int64), features=features)


def labels(cands: Candidates, members: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """1 where the candidate is in the member's target basket (`targets` rows follow `members`)."""
    row = np.searchsorted(members, cands.member)
    return np.asarray(targets[row, cands.item]).ravel().astype(np.float32)


def _fit_booster(cands: Candidates, y: np.ndarray, keep: np.ndarray, params: RankerSettings,
                 seed: int) -> lgb.Booster | None:
    """LambdaRank over members (groups) with at least one positive among their kept candidates; None if none has."""
    member, x, y = cands.member[keep], cands.features[keep], y[keep]
    positive = np.zeros(int(member.max()) + 1 if len(member) else 0, bool)
    positive[member[y > 0]] = True
    use = positive[member]
    if not use.any():
        return None
    member, x, y = member[use], x[use], y[use]
    _, group = np.unique(member, return_counts=True)
    data = lgb.Dataset(x, y, group=group, feature_name=list(FEATURES), free_raw_data=True)
    return lgb.train({"objective": "lambdarank", "metric": "ndcg", "eval_at": [10], "learning_rate":
                      params.learning_rate, "num_leaves": params.num_leaves, "min_data_in_leaf": 50,
                      "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "seed": seed,
                      "num_threads": params.n_jobs, "verbosity": -1, "lambdarank_truncation_level": 20},
                     data, num_boost_round=params.n_estimators)


class CompiledBooster:
    """A LightGBM booster compiled to machine code by `lleaves`: the same predictions (to float rounding)
    for about a sixth of the CPU per row, after a compile of ~40 CPU-seconds for 300 trees, so only large
    scoring runs (`compile_members`) use it. `folder` holds the compiled code when it was compiled
    elsewhere (`compile_boosters`): it is loaded instead of compiled again."""

    def __init__(self, booster: lgb.Booster, folder: Path | None = None) -> None:
        import lleaves  # here, not at module level: loading LLVM costs every other user of this module time

        with tempfile.TemporaryDirectory(prefix="omnirec-ranker-") as scratch:
            model_file, cache = _compile_paths(Path(scratch) if folder is None else folder)
            if folder is None:
                booster.save_model(model_file)
            self.model = lleaves.Model(model_file=str(model_file))
            self.model.compile(cache=None if folder is None else str(cache))

    def predict(self, features: np.ndarray, num_threads: int = 1) -> np.ndarray:
        return self.model.predict(np.asarray(features, dtype=np.float64), n_jobs=num_threads)


def _compile_paths(folder: Path) -> tuple[Path, Path]:
    return folder / "booster.txt", folder / "booster.so"


def _compile_into(folder: Path) -> None:
    """Compile the booster saved in `folder` into its cache file there (runs in a forked process)."""
    import lleaves

    model_file, cache = _compile_paths(folder)
    lleaves.Model(model_file=str(model_file)).compile(cache=str(cache))


def compile_boosters(boosters: list[lgb.Booster], processes: int) -> list[CompiledBooster]:
    """`CompiledBooster`s of `boosters`, compiled side by side in up to `processes` forked processes (LLVM
    compiles on one core: the two rankers' ~75 s become ~40 on two)."""
    if processes <= 1 or len(boosters) <= 1:
        return [CompiledBooster(booster) for booster in boosters]
    with tempfile.TemporaryDirectory(prefix="omnirec-ranker-") as scratch:
        folders = [Path(scratch) / str(n) for n in range(len(boosters))]
        for folder, booster in zip(folders, boosters, strict=True):
            folder.mkdir()
            booster.save_model(_compile_paths(folder)[0])
        with multiprocessing.get_context("fork").Pool(min(processes, len(boosters))) as pool:
            pool.map(_compile_into, folders)
        return [CompiledBooster(booster, folder) for folder, booster in zip(folders, boosters, strict=True)]


@dataclass(frozen=True)
class TwoStageModel:
    """The fitted rankers: `mixed` for MIXED and BUY_AGAIN, `discover` for never-bought items.

    `discover` is None when the training windows had no never-bought target to learn from; DISCOVER then
    ranks never-bought candidates with `mixed`.
    """

    mixed: lgb.Booster | CompiledBooster
    discover: lgb.Booster | CompiledBooster | None
    params: RankerSettings

    def compiled(self) -> TwoStageModel:
        """The same rankers compiled (`CompiledBooster`, side by side in `processes`), for scoring many members."""
        boosters = [b for b in (self.mixed, self.discover) if isinstance(b, lgb.Booster)]
        done = dict(zip(map(id, boosters), compile_boosters(boosters, self.params.processes), strict=True))
        return TwoStageModel(mixed=done.get(id(self.mixed), self.mixed),
                             discover=None if self.discover is None else done.get(id(self.discover), self.discover),
                             params=self.params)

    def scores(self, cands: Candidates) -> dict[Intent, np.ndarray]:
        """Ranker score per candidate and intent; -inf where the intent excludes it (bought / never bought)."""
        bought = cands.column("bought") > 0
        mixed = self.mixed.predict(cands.features, num_threads=self.params.n_jobs)
        discover = np.full(len(bought), -np.inf)
        if self.discover is None:
            discover[~bought] = mixed[~bought]
        elif (~bought).any():
            discover[~bought] = self.discover.predict(cands.features[~bought], num_threads=self.params.n_jobs)
        return {Intent.MIXED: mixed, Intent.BUY_AGAIN: np.where(bought, mixed, -np.inf), Intent.DISCOVER: discover}


class RankerData:
    """Contexts and labelled training windows by cut-off day, each built once.

    The evaluated ranker (cut-off c) and the published one (c + test_days) share windows, and the
    evaluation's scoring context is the published ranker's first window, so `omnirec train` builds five
    contexts instead of eight. One context is kept at a time (each holds member x item matrices);
    windows keep only their sampled members' candidates. ALS is fitted once, for the earliest window
    (`window_als`); later windows fold their members into its item factors.
    """

    def __init__(self, baskets: Baskets, interactions: Interactions, config: TrainConfig, seed: int = 0,
                 promotions: pa.Table | None = None) -> None:
        self.baskets, self.interactions, self.config, self.seed = baskets, interactions, config, seed
        self.params = config.ranker
        self.promotions = None if promotions is None or not self.params.promotions else Promotions.from_table(
            promotions, interactions.items, baskets.store_names)
        self._context: Context | None = None
        self._windows: dict[int, tuple[Candidates, np.ndarray]] = {}
        self._order = np.lexsort((baskets.day, baskets.item, baskets.member))
        self.window_als: ALSRecommender | None = None
        """The ALS fitted for the earliest window built so far, and the day it was fitted up to."""
        self._window_als_day = 0

    def context(self, cut_day: int, als: FactorizationRecommender | None = None) -> Context:
        """The context at `cut_day` (the kept one if it is for that day). Without `als`, ALS comes from the
        window ALS when that was fitted up to `cut_day` or earlier (folded in), else from a new fit, which
        becomes the window ALS."""
        if self._context is None or self._context.cut_day != cut_day:
            self._context = None
            fold_from = self.window_als if self._window_als_day <= cut_day else None
            self._context = build_context(self.baskets, self.interactions, self.config, cut_day, self.params,
                                          self.seed, als, self.promotions, fold_from, self._order)
            if als is None and fold_from is None and isinstance(self._context.als, ALSRecommender):
                self.window_als, self._window_als_day = self._context.als, cut_day
        return self._context

    def window(self, cut_day: int) -> tuple[Candidates, np.ndarray] | None:
        """Candidates of up to `train_members` members with a basket in the `window_days` after `cut_day`,
        features at `cut_day`, and their labels (1: in that next basket); None when no member bought both
        before `cut_day` and in the window after it (a short history)."""
        days = self.params.window_days
        day = self.baskets.day
        if not ((day <= cut_day).any() and ((day > cut_day) & (day <= cut_day + days)).any()):
            return None
        if cut_day not in self._windows:
            split = next_basket_split(self.baskets.until(cut_day + days), days, cut_day=cut_day)
            if not len(split.members):
                return None
            rows = np.arange(len(split.members))
            if len(rows) > self.params.train_members:
                rng = np.random.default_rng([self.seed, cut_day])
                rows = np.sort(rng.choice(rows, self.params.train_members, replace=False))
            members = split.members[rows]
            cands = candidates(self.context(cut_day), members, self.params)
            self._windows[cut_day] = (cands, labels(cands, members, split.targets[rows]))
        return self._windows[cut_day]


def fit_ranker(data: RankerData, cut_day: int, progress: bool = False) -> TwoStageModel | None:
    """Train on `windows` windows ending at `cut_day`: features at cut - w*days, labels after it.

    Windows the history does not reach are skipped; None when no window has a next basket among its
    candidates (a history too short to learn from: the bundle then holds no intent lists and the service
    answers from the collaborative model, which is what the gate then judges)."""
    params = data.params
    cuts = [cut_day - w * params.window_days for w in range(1, params.windows + 1)]
    for cut in tqdm(sorted(cuts), desc="ranker windows", unit="window", disable=not progress):
        data.window(cut)  # earliest first: its ALS fit serves the later windows (fold-in)
    parts, ys = [], []
    for cut in cuts:
        window = data.window(cut)
        if window is not None:
            parts.append(window[0])
            ys.append(window[1])
    if not parts:
        return None
    offset = 0
    shifted = []
    for cands in parts:  # members of different windows are different ranking groups
        shifted.append(Candidates(cands.member + offset, cands.item, cands.features))
        offset += data.baskets.n_members
    train = Candidates(np.concatenate([c.member for c in shifted]), np.concatenate([c.item for c in shifted]),
                       np.concatenate([c.features for c in shifted]))
    y = np.concatenate(ys)
    bought = train.column("bought") > 0
    mixed, discover = fit_boosters(train, y, [np.ones(len(y), bool), ~bought], params, data.seed)
    if mixed is None:
        return None
    return TwoStageModel(mixed=mixed, discover=discover, params=params)


_FITTING: tuple[Candidates, np.ndarray, list[np.ndarray], RankerSettings, int] | None = None
"""What `_fit_masked` reads in a forked process: set before the fork, shared with the parent's pages."""


def _fit_masked(which: int) -> str | None:
    """The `which`-th booster of `fit_boosters`, as LightGBM's model text (what crosses the process boundary)."""
    if _FITTING is None:
        raise RuntimeError("_fit_masked runs only inside fit_boosters")
    train, y, keeps, params, seed = _FITTING
    booster = _fit_booster(train, y, keeps[which], params, seed)
    return None if booster is None else booster.model_to_string()


def fit_boosters(train: Candidates, y: np.ndarray, keeps: list[np.ndarray], params: RankerSettings,
                 seed: int) -> list[lgb.Booster | None]:
    """One `_fit_booster` per mask in `keeps`, side by side in up to `processes` forked processes: each fit
    runs on one thread (`n_jobs`), so the two rankers take the time of one on two cores. The same boosters
    as fitted in this process (LightGBM on one thread is deterministic; its model text is exact)."""
    global _FITTING
    if params.processes <= 1 or len(keeps) <= 1:
        return [_fit_booster(train, y, keep, params, seed) for keep in keeps]
    _FITTING = (train, y, keeps, params, seed)
    try:
        with multiprocessing.get_context("fork").Pool(min(params.processes, len(keeps))) as pool:
            texts = pool.map(_fit_masked, range(len(keeps)))
    finally:
        _FITTING = None
    return [None if text is None else lgb.Booster(model_str=text) for text in texts]


def top_lists(cands: Candidates, scores: np.ndarray, members: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each member's k best candidates by `scores` and their scores (-1 / -inf where fewer), rows in `members`
    order."""
    out = np.full((len(members), k), -1, np.int64)
    out_scores = np.full((len(members), k), -np.inf, np.float32)
    ok = np.isfinite(scores)
    member, item, score = cands.member[ok], cands.item[ok], scores[ok]
    order = np.lexsort((-score, member))
    member, item, score = member[order], item[order], score[order]
    starts = np.searchsorted(member, member)
    rank = np.arange(len(member)) - starts
    keep = rank < k
    rows = np.searchsorted(members, member[keep])
    out[rows, rank[keep]] = item[keep]
    out_scores[rows, rank[keep]] = score[keep]
    return out, out_scores


@dataclass(frozen=True)
class IntentLists:
    """Each member's best items per intent, best first: the lists the bundle holds and the service reads.

    Rows follow `members`; items are int32 item indexes (-1 pads a short list), scores float32 (-inf pads).
    """

    members: np.ndarray
    items: dict[Intent, np.ndarray]
    scores: dict[Intent, np.ndarray]


_SCORING: tuple[TwoStageModel, Context, int] | None = None
"""The model, context and depth the scoring workers read: set before the pool forks, so each worker shares
the parent's context pages instead of receiving a pickled copy of member x item matrices."""


def _score_batch(members: np.ndarray) -> tuple[dict[Intent, np.ndarray], dict[Intent, np.ndarray]]:
    """One batch's candidates, scores and `depth` best items per intent (runs in a worker or in place)."""
    if _SCORING is None:
        raise RuntimeError("_score_batch runs only inside intent_lists")
    model, ctx, depth = _SCORING
    cands = _candidate_batch(ctx, members, model.params)
    items, scores = {}, {}
    for intent, score in model.scores(cands).items():
        items[intent], scores[intent] = top_lists(cands, score, members, depth)
    return items, scores


def intent_lists(model: TwoStageModel, ctx: Context, members: np.ndarray, depth: int,
                 progress: bool = False) -> IntentLists:
    """Score `members` (sorted) `batch` at a time from `ctx` and keep `depth` items per intent.

    From `compile_members` members on, the rankers are compiled first (`CompiledBooster`). Batches are
    spread over `processes` forked workers when there are several (scoring every member is
    the longest stage at a million members); memory is bounded by one batch's candidates per worker plus
    the output. Members without a basket before the cut-off get empty (-1) rows, for serving to fall back
    on popularity or cold start.
    """
    global _SCORING
    params = model.params
    items = {intent: np.full((len(members), depth), -1, np.int32) for intent in Intent}
    scores = {intent: np.full((len(members), depth), -np.inf, np.float32) for intent in Intent}
    active = np.flatnonzero(ctx.member_baskets[members] > 0)
    chunks = [active[start:start + params.batch] for start in range(0, len(active), params.batch)]
    processes = min(params.processes, len(chunks))
    if len(active) >= params.compile_members:
        model = model.compiled()
    _SCORING = (model, ctx, depth)
    try:
        with (multiprocessing.get_context("fork").Pool(processes) if processes > 1 else _InPlace()) as pool:
            results = pool.imap(_score_batch, [members[rows] for rows in chunks])
            for rows, (top, top_scores) in tqdm(zip(chunks, results, strict=True), total=len(chunks),
                                                desc="intent lists", unit="batch", disable=not progress):
                for intent in Intent:
                    items[intent][rows], scores[intent][rows] = top[intent], top_scores[intent]
    finally:
        _SCORING = None
    return IntentLists(members=members, items=items, scores=scores)


class _InPlace:
    """The pool's `imap` in this process (one process: no fork, no pickling)."""

    def __enter__(self) -> _InPlace:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, function: Callable[[T], R], iterable: Iterable[T]) -> Iterator[R]:
        return map(function, iterable)
