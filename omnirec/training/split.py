"""Time-based train/test split: the model is judged on what members did after everything it saw."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omnirec.domain.clock import DAY
from omnirec.domain.errors import InvalidArgument
from omnirec.domain.readers import Interactions
from omnirec.domain.vocab import Col


@dataclass(frozen=True)
class TimeSplit:
    """Boolean row masks over an `Interactions` table; train rows have ts <= cutoff_ts, test rows ts > it."""

    train_rows: np.ndarray
    test_rows: np.ndarray
    cutoff_ts: int


def time_split(interactions: Interactions, test_days: int) -> TimeSplit:
    """Hold out the last `test_days` of the log; a random split would leak the future into training."""
    if len(interactions) == 0:
        raise InvalidArgument("events", "the event log has no member-item events to split")
    ts = interactions.events[Col.TS].to_numpy()
    cutoff = int(ts.max()) - test_days * DAY
    train = ts <= cutoff
    if not train.any() or train.all():
        raise InvalidArgument("test_days", f"{test_days} days leaves an empty train or test part "
                              f"(history spans {(int(ts.max()) - int(ts.min())) / DAY:.1f} days)")
    return TimeSplit(train_rows=train, test_rows=~train, cutoff_ts=cutoff)
