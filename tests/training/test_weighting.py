"""Confidence weighting: event and channel weights, recency, returns, and clear errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import Interactions
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.training.config import TrainConfig
from omnirec.training.split import time_split
from omnirec.training.weighting import confidence_matrix, event_weights, interaction_matrix

DAY = 86_400


def events(rows: list[tuple[str, str, str, str, int]]) -> Interactions:
    """(member, item, channel, event_type, ts) rows as a validated-schema table."""
    n = len(rows)
    table = pa.table({
        "member_id": [r[0] for r in rows], "anonymous_id": pa.nulls(n, pa.string()), "item_id": [r[1] for r in rows],
        "channel": [r[2] for r in rows], "event_type": [r[3] for r in rows],
        "store_id": ["s1" if r[2] in ("pos", "store") else None for r in rows],
        "quantity": np.ones(n, np.int32), "price": np.zeros(n), "ts": np.array([r[4] for r in rows], np.int64),
    }, schema=EVENT_SCHEMA)
    return Interactions.from_events(table)


def test_event_channel_and_recency_weights() -> None:
    inter = events([("m1", "a", "app", "purchase", 10 * DAY), ("m1", "b", "web", "view", 0),
                    ("m1", "c", "app", "store_visit", 10 * DAY)])
    config = TrainConfig(channel_weights={"app": 2.0, "web": 1.0}, half_life_days=10)
    w = event_weights(inter, config)
    assert w.tolist() == pytest.approx([5.0 * 2.0, 1.0 * 1.0 * 0.5, 0.0])


def test_returns_subtract_and_drop_pairs_at_zero() -> None:
    inter = events([("m1", "a", "app", "purchase", 0), ("m1", "a", "app", "return", 0),
                    ("m1", "b", "app", "purchase", 0), ("m1", "b", "app", "view", 0)])
    m = interaction_matrix(inter, TrainConfig(half_life_days=None, log_scale=False))
    items = inter.items
    assert m[0, items.get("a")] == 0 and m.nnz == 1
    assert m[0, items.get("b")] == pytest.approx(6.0)


def test_nan_weights_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match="weights") as err:
        confidence_matrix(np.array([0]), np.array([0]), np.array([math.nan]), (1, 1))
    assert err.value.field == "weights"
    with pytest.raises(ValidationError, match="event_weights.purchase"):
        TrainConfig(event_weights={"purchase": math.nan})
    with pytest.raises(ValidationError, match="channel_weights.fax"):
        TrainConfig(channel_weights={"fax": 1.0})
    with pytest.raises(ValidationError, match="half_life_days"):
        TrainConfig(half_life_days=-1)


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig(learning_rat=0.1)


def test_empty_log_is_a_clear_error() -> None:
    empty = events([])
    with pytest.raises(InvalidArgument, match="events") as err:
        event_weights(empty, TrainConfig())
    assert err.value.field == "events"
    with pytest.raises(InvalidArgument, match="events"):
        time_split(empty, 7)


def test_time_split_holds_out_the_last_days() -> None:
    inter = events([("m1", "a", "app", "view", d * DAY) for d in range(30)])
    split = time_split(inter, 7)
    assert split.test_rows.sum() == 7 and split.train_rows.sum() == 23
    with pytest.raises(InvalidArgument, match="test_days"):
        time_split(inter, 60)
