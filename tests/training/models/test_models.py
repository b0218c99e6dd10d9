"""Contract every recommender meets, and the models beating popularity on planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from omnirec.domain.readers import RetailData
from omnirec.domain.topk import top_k
from omnirec.domain.vocab import Col
from omnirec.training.config import TrainConfig
from omnirec.training.models import Recommender
from omnirec.training.pipeline import TrainResult, make_models, train_set


@pytest.fixture(scope="module")
def fitted(small_retail_dir, train_config: TrainConfig) -> tuple[list[Recommender], object]:
    retail = RetailData.read(small_retail_dir)
    inter = retail.interactions()
    data = train_set(retail, inter, train_config, np.ones(len(inter), bool),
                     int(inter.events[Col.TS].to_numpy().max()))
    models = make_models(train_config)
    for model in models:
        model.fit(data)
    return models, data


def test_every_model_scores_all_items_and_skips_excluded(fitted) -> None:
    models, data = fitted
    members = np.arange(5)
    for model in models:
        scores = model.scores(members)
        assert scores.shape == (5, data.matrix.shape[1]), model.name
        assert np.isfinite(scores).all(), model.name
        top = model.recommend(members, 10, exclude=data.matrix)
        assert top.shape == (5, 10)
        for row, items in zip(members, top, strict=True):
            seen = set(data.matrix[row].indices.tolist())
            assert not seen & set(items.tolist()), model.name
            assert len(set(items.tolist())) == 10


def test_top_k_orders_best_first() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2]]


def test_models_beat_popularity_on_planted_structure(trained: TrainResult) -> None:
    ndcg = {name: row["ndcg@10"] for name, row in trained.metrics.items()}
    assert trained.beats_popularity
    assert ndcg["als"] > ndcg["popularity"]
    assert ndcg["lightfm"] > ndcg["popularity"]
    assert trained.metrics["als"]["coverage@10"] > trained.metrics["popularity"]["coverage@10"]


def test_same_seed_same_metrics(small_retail_dir, trained: TrainResult, train_config: TrainConfig) -> None:
    from omnirec.training.pipeline import train

    again = train(small_retail_dir, train_config, publish=False, progress=False)
    assert again.metrics == trained.metrics
    assert again.version == trained.version + 1


def test_bpr_option_meets_the_contract(fitted, train_config: TrainConfig) -> None:
    from omnirec.training.pipeline import collaborative_model

    _, data = fitted
    model = collaborative_model(train_config.model_copy(update={"collaborative": "bpr"}))
    assert model.name == "bpr"
    model.fit(data)
    top = model.recommend(np.arange(3), 5, exclude=data.matrix)
    assert top.shape == (3, 5)
    assert not set(data.matrix[0].indices.tolist()) & set(top[0].tolist())


def test_lightfm_gives_cold_items_content_vectors(small_retail_dir, train_config: TrainConfig) -> None:
    from omnirec.training.index import normalize
    from omnirec.training.models import LightFMRecommender

    retail = RetailData.read(small_retail_dir)
    inter = retail.interactions()
    cold = 0
    rows = inter.item_idx != cold
    data = train_set(retail, inter, train_config, rows, int(inter.events[Col.TS].to_numpy().max()))
    assert data.matrix[:, cold].nnz == 0
    model = LightFMRecommender(seed=0, **train_config.lightfm.kwargs())
    model.fit(data)
    unit = normalize(model.similarity_vectors)
    neighbours = top_k((unit @ unit[cold])[None], 11)[0][1:]
    category = retail.items["category"].to_numpy(zero_copy_only=False)
    same = np.mean(category[neighbours] == category[cold])
    base_rate = np.mean(category == category[cold])
    assert same > 3 * base_rate


def test_lightfm_fits_a_sample_of_at_most_max_members(small_retail_dir, train_config: TrainConfig) -> None:
    from omnirec.training.models import LightFMRecommender

    retail = RetailData.read(small_retail_dir)
    inter = retail.interactions()
    data = train_set(retail, inter, train_config, np.ones(len(inter), bool),
                     int(inter.events[Col.TS].to_numpy().max()))
    active = int((np.diff(data.matrix.indptr) > 0).sum())
    settings = train_config.lightfm.model_copy(update={"max_members": active // 4})
    sampled = LightFMRecommender(seed=0, **settings.kwargs())
    sampled.fit(data)
    full = LightFMRecommender(seed=0, **train_config.lightfm.kwargs())
    full.fit(data)
    assert (sampled.fitted_members, full.fitted_members) == (active // 4, active)
    assert sampled.similarity_vectors.shape == full.similarity_vectors.shape
