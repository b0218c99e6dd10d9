"""Deterministic purchase logs with planted structure, for the next-basket tests.

Every member shops every `trip_days` days. Each has `staples` items, each with its own repurchase cycle (a
multiple of the trip interval) and phase, bought exactly when due; so the next basket is the set of due
staples, which frequency alone cannot tell apart from the member's other staples. A planted complement: a
member who buys item `i` (a staple) also buys its partner `partner(i)` in the same basket half the time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from omnirec.domain.readers import Interactions
from omnirec.domain.schema import EVENT_SCHEMA
from omnirec.domain.vocab import Col

DAY = 86_400
START = 1_700_006_400 - 1_700_006_400 % DAY


def planted_events(members: int = 80, items: int = 120, days: int = 160, trip_days: int = 2, staples: int = 16,
                   seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {c: [] for c in EVENT_SCHEMA.names}
    for m in range(members):
        own = rng.choice(items // 2, staples, replace=False) * 2  # staples are even items, partners odd
        cycles = rng.choice(np.arange(2, 9), staples) * trip_days
        phases = (rng.random(staples) * cycles).astype(int) // trip_days * trip_days
        for day in range(0, days, trip_days):
            due = own[(day - phases) % cycles == 0]
            extra = due[rng.random(len(due)) < 0.5] + 1
            for item in np.concatenate([due, extra]):
                rows[Col.MEMBER_ID].append(f"m{m:03d}")
                rows[Col.ANONYMOUS_ID].append(None)
                rows[Col.ITEM_ID].append(f"i{int(item):03d}")
                rows[Col.CHANNEL].append("pos")
                rows[Col.EVENT_TYPE].append("purchase")
                rows[Col.STORE_ID].append(f"s{m % 3}")
                rows[Col.QUANTITY].append(1)
                rows[Col.PRICE].append(1.0 + item % 7)
                rows[Col.TS].append(START + day * DAY + 3600 * 10)
    return pa.table(rows, schema=EVENT_SCHEMA)


def planted_interactions(**kwargs: int) -> Interactions:
    return Interactions.from_events(planted_events(**kwargs))
