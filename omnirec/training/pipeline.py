"""`omnirec train` end to end: read -> weight -> split -> fit every model -> evaluate -> bundle -> publish.

The bundle is always written (so a failed candidate can be inspected), but it is published only when what
the service serves, the two-stage ranker's MIXED list, clears the strongest next-basket baseline, unless
forced (or, with `publish_gate = "popularity"`, when the collaborative model beats overall popularity).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from omnirec.bundle import Array, BundleArtifacts, BundleRegistry, Index, Manifest, Sparse, write_bundle
from omnirec.bundle.format import INTENT_ARRAYS
from omnirec.domain.clock import DAY, stale_data_warning
from omnirec.domain.derive import restage
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.lifecycle import LifecycleRules
from omnirec.domain.readers import Interactions, RetailData
from omnirec.domain.vocab import Col
from omnirec.spark.config import SparkConfig
from omnirec.training.baskets import Baskets, NextBasketSplit, next_basket_split
from omnirec.training.complements import purchase_lift
from omnirec.training.config import TrainConfig
from omnirec.training.evaluation import eval_members, evaluate, relevant_items
from omnirec.training.features import item_features, member_activity, member_features
from omnirec.training.index import build_index, measure_recall, normalize, top_lists
from omnirec.training.models import (
    ALSRecommender,
    BPRRecommender,
    FactorizationRecommender,
    LightFMRecommender,
    PopularityRecommender,
    Recommender,
    SegmentPopularityRecommender,
    TrainSet,
)
from omnirec.training.models.frequency import (
    TIFUKNN,
    CollaborativeBaseline,
    GPTopFreq,
    GTopFreq,
    PTopFreq,
    StorePopularity,
)
from omnirec.training.next_basket import (
    SERVED_MIXED,
    GateDecision,
    MethodResult,
    evaluate_methods,
    list_heads,
    next_basket_gate,
    score_lists,
    served_results,
)
from omnirec.training.ranker import IntentLists, RankerData, TwoStageModel, fit_ranker, intent_lists
from omnirec.training.split import time_split
from omnirec.training.weighting import confidence_matrix, event_weights, interaction_matrix

log = logging.getLogger(__name__)

LIBRARIES = ("implicit", "rectools-lightfm", "faiss-cpu", "numpy", "scipy", "pyarrow")


@dataclass
class TrainResult:
    version: int
    path: Path
    metrics: dict[str, dict[str, float]]
    beats_popularity: bool
    published: bool
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage."""
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU seconds per stage, this process and its scoring workers: what a quiet machine's cores spend,
    which wall time on a shared machine does not show."""
    next_basket: list[MethodResult] = field(default_factory=list)
    """The next-basket protocol's rows: the served list first, then the baselines."""
    gate: GateDecision | None = None

    @property
    def publishable(self) -> bool:
        """What the configured publish gate says (the next-basket gate unless configured otherwise)."""
        return self.gate.passed if self.gate is not None else self.beats_popularity


def data_fingerprint(retail: RetailData) -> str:
    """sha256 over the Arrow buffers of every input table: same data, same fingerprint."""
    digest = hashlib.sha256()
    for table in (retail.members, retail.items, retail.events):
        for column in table.columns:
            for buffer in column.combine_chunks().buffers():
                if buffer is not None:
                    digest.update(memoryview(buffer))
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def collaborative_model(config: TrainConfig) -> Recommender:
    if config.collaborative == "bpr":
        return BPRRecommender(seed=config.seed, **config.bpr.kwargs())
    return ALSRecommender(seed=config.seed, **config.als.kwargs())


def make_models(config: TrainConfig, collaborative: Recommender | None = None) -> list[Recommender]:
    """Baselines first, then the collaborative and hybrid models; all share the `Recommender` contract.
    `collaborative` replaces the configured local one (the Spark engine's ALS)."""
    return [PopularityRecommender(), SegmentPopularityRecommender(Col.CHANNEL),
            SegmentPopularityRecommender(Col.STORE_ID), collaborative or collaborative_model(config),
            LightFMRecommender(seed=config.seed, **config.lightfm.kwargs())]


def engine_model(config: TrainConfig, data_dir: Path | None, interactions: Interactions,
                 spark: SparkConfig | None = None) -> Recommender | None:
    """The Spark engine's collaborative model (imported only then: pyspark is an optional extra)."""
    if config.engine == "local":
        return None
    if data_dir is None:
        raise InvalidArgument("train.engine", "the spark engine reads the event log itself: train from a data dir")
    if config.collaborative != "als":
        raise InvalidArgument("train.collaborative", "the spark engine fits ALS (MLlib has no BPR)")
    try:
        from omnirec.training.spark import spark_als
    except ImportError as exc:
        raise InvalidArgument("train.engine", f"spark needs pyspark: pip install 'omnirec[spark]' ({exc})") from None
    return spark_als(config, spark or SparkConfig(), data_dir, interactions)


def train_set(retail: RetailData, interactions: Interactions, config: TrainConfig, rows: np.ndarray,
              now_ts: int) -> TrainSet:
    """Weights anchored at `now_ts` (the cut-off), matrix and side features from `rows` only."""
    weights = event_weights(interactions, config, now_ts=now_ts)
    shape = (len(interactions.members), len(interactions.items))
    matrix = confidence_matrix(interactions.member_idx[rows], interactions.item_idx[rows], weights[rows], shape,
                               config.log_scale)
    return TrainSet(matrix=matrix, interactions=interactions, rows=rows, weights=weights, now_ts=now_ts,
                    member_features=member_features(retail.members, interactions.members,
                                                    member_activity(retail.events, interactions.members, now_ts)),
                    item_features=item_features(retail.items, interactions.items))


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the scoring workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Stages:
    """Wall and CPU seconds per named stage of a training run (each also logged at DEBUG as it ends, so a
    long run that is stopped still tells where its time went)."""

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.wall[name] = time.perf_counter() - wall
        self.cpu[name] = cpu_seconds() - cpu
        log.debug("stage %s: wall %.1f s, CPU %.1f s, load average %.1f", name, self.wall[name], self.cpu[name],
                  os.getloadavg()[0])


def fit_all(models: list[Recommender], data: TrainSet, progress: bool, stages: Stages, prefix: str) -> None:
    """Fit each model with BLAS on one thread; times each as stage `prefix` + model name."""
    with threadpool_limits(1, "blas"):
        for model in tqdm(models, desc="fit", unit="model", disable=not progress):
            with stages.time(prefix + model.name):
                model.fit(data)


@dataclass(frozen=True)
class ServedLists:
    """What the bundle's intent arrays hold: the published ranker's lists for every member, and as of when."""

    lists: IntentLists
    item_cycle_days: np.ndarray
    as_of: str


def next_basket_report(interactions: Interactions, data: RankerData, collaborative: Recommender,
                       hybrid: Recommender, config: TrainConfig, cutoff_ts: int, stages: Stages,
                       progress: bool = False) -> tuple[list[MethodResult], GateDecision, TwoStageModel | None]:
    """The next-basket protocol on this data set: what the service serves against the strongest baselines.

    The split is by day: `test_days` before the last purchase day, each member's first basket after it.
    The served rows are the two-stage ranker's lists computed by `intent_lists`, the function that writes
    the bundle, with the ranker fitted on windows before the cut-off. The collaborative models were fitted
    on events before `cutoff_ts` (`test_days` before the newest event), which is not after the cut-off
    day, so nothing after the cut-off reaches any method. Seconds per stage go into `stages`.
    """
    with stages.time("next_basket_baselines"):
        split = next_basket_split(data.baskets, config.test_days)
        if len(split.members) > config.eval_members:
            keep = np.sort(np.random.default_rng(config.seed).choice(len(split.members), config.eval_members,
                                                                     replace=False))
            split = NextBasketSplit(split.history, split.members[keep], split.targets[keep], split.seen[keep],
                                    split.cut_day)
        methods = [GTopFreq(), PTopFreq(), GPTopFreq(), StorePopularity(), TIFUKNN(seed=config.seed),
                   CollaborativeBaseline(collaborative), CollaborativeBaseline(hybrid)]
        results = evaluate_methods(methods, split, config.eval_k, config.gate_bootstrap, config.seed)
    with stages.time("fit_ranker"):
        model = fit_ranker(data, split.cut_day, progress)
    buyers = int(np.count_nonzero(np.bincount(data.baskets.member, minlength=data.baskets.n_members)))
    if model is not None and not config.refit_full and buyers >= config.ranker.compile_members:
        with stages.time("compile_ranker"):  # this model scores every member next: compiled once, for both
            model = model.compiled()
    with stages.time("next_basket_served"):
        if model is None:  # no intent lists: the service answers MIXED from the collaborative model
            served = CollaborativeBaseline(collaborative, SERVED_MIXED).recommend(split.members, config.eval_k)
            results = [score_lists(SERVED_MIXED, served, split, config.gate_bootstrap, config.seed), *results]
        else:
            context = data.context(split.cut_day, ranker_als(collaborative, cutoff_ts // DAY <= split.cut_day))
            lists = intent_lists(model, context, split.members, config.ranker.list_depth, progress)
            results = served_results(list_heads(lists, config.eval_k), split, config.gate_bootstrap,
                                     config.seed) + results
    metrics = (f"recall@{config.eval_k}", f"ndcg@{config.eval_k}")
    return results, next_basket_gate(results, SERVED_MIXED, metrics, config.gate_margin, config.gate_bootstrap,
                                     config.seed), model


def ranker_als(collaborative: Recommender, before_cut: bool) -> FactorizationRecommender | None:
    """The pipeline's own ALS for the ranker's context when it is one and saw nothing after the context's
    cut-off (saves an ALS fit at scale); None lets the context fit its own."""
    if before_cut and collaborative.name == "als" and isinstance(collaborative, FactorizationRecommender):
        return collaborative
    return None


def served_lists(data: RankerData, model: TwoStageModel, interactions: Interactions, collaborative: Recommender,
                 config: TrainConfig, progress: bool = False, cut_day: int | None = None) -> ServedLists:
    """Every bundle member's intent lists as of the end of `cut_day` (default: the end of the data), from
    the history up to it; members without a basket get empty rows. `collaborative` must not have seen a
    later event (the bench passes one fitted up to its cut-off)."""
    ts = interactions.events[Col.TS].to_numpy()
    cut_day = int(ts.max()) // DAY if cut_day is None else cut_day
    last_ts = int(ts[ts < (cut_day + 1) * DAY].max())
    context = data.context(cut_day, ranker_als(collaborative, True))
    lists = intent_lists(model, context, np.arange(len(interactions.members)), config.ranker.list_depth, progress)
    return ServedLists(lists=lists, item_cycle_days=context.items["i_cycle"].astype(np.float32),
                       as_of=datetime.fromtimestamp(last_ts, UTC).isoformat(timespec="seconds"))


def intent_arrays(served: ServedLists) -> dict[Array, np.ndarray]:
    """The bundle's intent arrays (`INTENT_ARRAYS`) and item repurchase cycles."""
    out: dict[Array, np.ndarray] = {Array.ITEM_CYCLE_DAYS: served.item_cycle_days}
    for intent, (items, scores) in INTENT_ARRAYS.items():
        out[items], out[scores] = served.lists.items[intent], served.lists.scores[intent]
    return out


def beats_popularity(metrics: dict[str, dict[str, float]], model: str, k: int) -> bool:
    return metrics[model][f"ndcg@{k}"] > metrics["popularity"][f"ndcg@{k}"]


def train(data_dir: Path, config: TrainConfig, force: bool = False, publish: bool = True,
          progress: bool = True, as_of: float | None = None, rules: LifecycleRules | None = None,
          spark: SparkConfig | None = None) -> TrainResult:
    """Train, evaluate and write the next bundle version from the retailer files in `data_dir`.

    With `as_of` (unix seconds) the data is taken as it stood then: later events are left out and the
    members' lifecycle stages (a member feature) are recomputed at as_of; a stale history is logged.
    """
    retail = RetailData.read(data_dir, promotions=config.ranker.promotions)
    if as_of is not None:
        retail = retail.until(as_of)
        stale_data_warning(float(pc.max(retail.events[Col.TS]).as_py() or 0), as_of, "train")
        retail = dataclasses.replace(retail, members=restage(retail.members, retail.events,
                                                             rules or LifecycleRules(), as_of))
    return train_retail(retail, config, force=force, publish=publish, progress=progress, data_dir=data_dir,
                        spark=spark)


def train_retail(retail: RetailData, config: TrainConfig, force: bool = False, publish: bool = True,
                 progress: bool = True, data_dir: Path | None = None, spark: SparkConfig | None = None) -> TrainResult:
    """`train` on already read files (tests and benchmarks reuse one read); timings exclude the read.
    The Spark engine (`spark`, where it runs) reads the event log again from `data_dir` or `spark.events_uri`."""
    stages = Stages()
    with stages.time("total"):
        with stages.time("prepare"):
            interactions = retail.interactions()
            split = time_split(interactions, config.test_days)
            evaluation_set = train_set(retail, interactions, config, split.train_rows, split.cutoff_ts)
        spark_model = engine_model(config, data_dir, interactions, spark)
        models = make_models(config, spark_model)
        fit_all(models, evaluation_set, progress, stages, "fit_")
        with stages.time("evaluate"):
            test = interaction_matrix(interactions, config, split.test_rows)
            relevant = relevant_items(test, evaluation_set.matrix)
            members = eval_members(relevant, evaluation_set.matrix, config.eval_members, config.seed)
            metrics = evaluate(models, evaluation_set.matrix, relevant, members, config.eval_k, config.eval_batch,
                               progress)
        better = beats_popularity(metrics, config.collaborative, config.eval_k)
        by_name = {model.name: model for model in models}
        with stages.time("next_basket"):
            ranker_data = RankerData(Baskets.from_interactions(interactions), interactions, config, config.seed,
                                     retail.promotions)
            next_basket, gate, ranker = next_basket_report(interactions, ranker_data, by_name[config.collaborative],
                                                           by_name["lightfm"], config, split.cutoff_ts, stages,
                                                           progress)
        if config.publish_gate == "popularity":
            gate = None
        if config.refit_full:
            all_rows = np.ones(len(interactions), bool)
            full = train_set(retail, interactions, config, all_rows,
                             int(interactions.events[Col.TS].to_numpy().max()))
            models = make_models(config, spark_model)
            fit_all(models, full, progress, stages, "refit_")
            if ranker is not None:  # lists only where the evaluated (and gated) answer was the ranker's
                with stages.time("refit_ranker"):
                    ranker = fit_ranker(ranker_data, int(interactions.events[Col.TS].to_numpy().max()) // DAY,
                                        progress)
        else:
            full = evaluation_set
        with stages.time("intent_lists"):
            served = None if ranker is None else served_lists(
                ranker_data, ranker, interactions, next(m for m in models if m.name == config.collaborative),
                config, progress)
            del ranker_data  # its context holds member x item matrices the bundle stage does not need
        registry = BundleRegistry(config.bundle_root)
        version = registry.next_version()
        result = TrainResult(version, registry.path(version), metrics, better, False, stages.wall, stages.cpu,
                             next_basket, gate)
        with stages.time("bundle"):
            artifacts = bundle_artifacts(models, full, config, version, metrics, better, data_fingerprint(retail),
                                         progress)
            if served is not None:
                artifacts = dataclasses.replace(artifacts, arrays={**artifacts.arrays, **intent_arrays(served)})
            verdict = {"lists_as_of": "" if served is None else served.as_of, "publish_gate": config.publish_gate,
                       "gate_passed": None if gate is None else gate.passed,
                       "next_basket": {"rows": [r.row() for r in next_basket], "gate": None if gate is None else
                                       {"passed": gate.passed, "margin": gate.margin, "checks": gate.checks}}}
            artifacts = dataclasses.replace(artifacts, manifest=artifacts.manifest.model_copy(update=verdict))
            write_bundle(artifacts, result.path)
        result.published = publish and (result.publishable or force)
        if result.published:
            registry.publish(version)
    return result


def bundle_artifacts(models: list[Recommender], data: TrainSet, config: TrainConfig, version: int,
                     metrics: dict[str, dict[str, float]], better: bool, fingerprint: str,
                     progress: bool = False) -> BundleArtifacts:
    """Arrays, sparse tables, FAISS indexes and the manifest of one bundle."""
    by_name = {model.name: model for model in models}
    popularity, collaborative, hybrid = by_name["popularity"], by_name[config.collaborative], by_name["lightfm"]
    if not (isinstance(popularity, PopularityRecommender) and isinstance(hybrid, LightFMRecommender)
            and isinstance(collaborative, FactorizationRecommender)):
        raise TypeError("bundle_artifacts needs the models of make_models()")
    item_factors, member_factors = collaborative.item_factors, collaborative.member_factors
    content_unit = normalize(hybrid.similarity_vectors)
    rng = np.random.default_rng(config.seed)
    item_index = build_index(content_unit, config.exact_index_max_items, config.hnsw_m, config.hnsw_ef_search)
    member_index = build_index(item_factors, config.exact_index_max_items, config.hnsw_m, config.hnsw_ef_search)
    n_q = min(config.index_recall_queries, len(content_unit))
    active = np.flatnonzero(np.diff(data.matrix.indptr) > 0)
    member_q = member_factors[rng.choice(active, min(n_q, len(active)), replace=False)] if len(active) else \
        member_factors[:1]
    reports = {Index.ITEM: measure_recall(item_index, content_unit, content_unit[rng.choice(
                   len(content_unit), n_q, replace=False)], config.eval_k).as_dict(),
               Index.MEMBER: measure_recall(member_index, item_factors, member_q, config.eval_k).as_dict()}
    names, embeddings, _ = hybrid.feature_embeddings()
    top: dict[Array, np.ndarray] = {}
    if config.member_top_k:
        top[Array.MEMBER_TOP_ITEMS], top[Array.MEMBER_TOP_SCORES] = top_lists(member_index, member_factors,
                                                                      config.member_top_k, progress=progress)
    channel_names, channel_table = popularity.by_channel
    store_ids, store_table = popularity.by_store
    params = config.model_dump(mode="json")
    manifest = Manifest(
        version=version,
        beats_popularity=better,
        complement_blend=config.complement_blend,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        data_fingerprint=fingerprint,
        collaborative=collaborative.name,
        params=params,
        params_digest=hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
        metrics=metrics,
        indexes=reports,
        counts={"members": int(data.matrix.shape[0]), "items": int(data.matrix.shape[1]),
                "interactions": int(data.matrix.nnz)},
        library_versions=library_versions(),
    )
    return BundleArtifacts(
        manifest=manifest, items=data.interactions.items, members=data.interactions.members,
        arrays={Array.MEMBER_FACTORS: member_factors, Array.ITEM_FACTORS: item_factors,
                Array.ITEM_CONTENT: hybrid.item_vectors, Array.ITEM_CONTENT_BIAS: hybrid.item_bias,
                Array.ITEM_CONTENT_UNIT: content_unit, Array.PROFILE_NAMES: names,
                Array.PROFILE_EMBEDDINGS: embeddings, Array.POPULARITY: popularity.overall,
                Array.POPULARITY_CHANNEL_NAMES: channel_names, Array.POPULARITY_STORE_IDS: store_ids, **top},
        sparse={Sparse.POPULARITY_CHANNELS: channel_table, Sparse.POPULARITY_STORES: store_table,
                Sparse.COMPLEMENTS: purchase_lift(data.interactions, data.rows, config.complements_min_count,
                                                  config.complements_per_item)},
        indexes={Index.ITEM: item_index, Index.MEMBER: member_index},
    )


def next_basket_table(result: TrainResult) -> Table:
    """The next-basket protocol's rows with their 95% intervals, and the gate's verdict."""
    n = result.next_basket[0].n_members if result.next_basket else 0
    verdict = "" if result.gate is None else f"; gate: {result.gate.reason()}"
    table = Table(title=f"next basket after the cut-off, {n:,} members, mean [95% CI]{verdict}")
    table.add_column("method")
    columns = list(result.next_basket[0].means) if result.next_basket else []
    for column in columns:
        table.add_column(column, justify="right")
    for row in result.next_basket:
        table.add_row(row.method, *(f"{row.means[c]:.4f} [{row.ci95[c][0]:.4f}, {row.ci95[c][1]:.4f}]"
                                    for c in columns))
    return table


def summary_table(result: TrainResult) -> Table:
    """Metrics per model and baseline on never-bought items, the verdict and where the bundle went."""
    status = "published" if result.published else "NOT published"
    verdict = "beats" if result.beats_popularity else "does NOT beat"
    table = Table(title=f"bundle v{result.version} at {result.path} ({status}; model {verdict} popularity on "
                        f"never-bought items; {result.seconds.get('total', 0):.1f}s)")
    columns = list(next(iter(result.metrics.values())))
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("fit s", justify="right")
    for name, row in result.metrics.items():
        fit = result.seconds.get(f"fit_{name}", float("nan"))
        table.add_row(name, *(f"{row[c]:.4f}" for c in columns), f"{fit:.1f}")
    return table


def print_summary(result: TrainResult, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(result))
    if result.next_basket:
        console.print(next_basket_table(result))
