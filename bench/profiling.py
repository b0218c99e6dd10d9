"""cProfile tables for the in-process CPU benches (`offer_cost.py`, `recommend_cost.py`)."""

from __future__ import annotations

import cProfile
import io
import pstats


def print_profiles(profiles: dict[str, cProfile.Profile], top: int) -> None:
    """Each kind of call's profile by cumulative and by own time: where a call's CPU goes, and in what."""
    for kind, p in profiles.items():
        for order in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(p, stream=out).sort_stats(order).print_stats(top)
            print(f"\n=== {kind}: by {order} ===\n" + out.getvalue())
