"""The background reaper of abandoned coupon holds (offers on Redis Cluster).

On a cluster `DecideCoupon` reserves budget in the offer's slot before it issues in the member's
(`offers.store`); a client that dies in between leaves a pending hold, which `OfferStore.reap` settles once
`offers.reservation_s` has passed. Decisions reap the offers they read, but an offer nobody decides on again
(a flash offer whose last coupon a dead client held) would keep its budget held: this loop settles every
offer's abandoned holds within `reservation_s` / 2 of their release time, without a decision. One worker runs
it (slot 0 of `service.supervisor`, or the only one): more copies would only repeat each other's round trips.
"""

from __future__ import annotations

import asyncio
import logging

import redis

from omnirec.domain.errors import OmnirecError
from omnirec.offers.engine import OfferEngine
from omnirec.offers.store import ContactHistory, OfferSnapshot

log = logging.getLogger(__name__)


async def reap_once(engine: OfferEngine) -> None:
    """Settle the holds past their release time of every offer in the catalogue in force (`OfferStore.reap`:
    one range read per offer, and the settling scripts for each hold found)."""
    offers = engine.catalogue.current().offers
    every_offer = OfferSnapshot(ContactHistory((), 0.0), {}, expired_holds=frozenset(o.id for o in offers))
    await engine.store.reap(every_offer, offers, engine.clock())


async def reap_abandoned_holds(engine: OfferEngine, interval_s: float) -> None:
    """`reap_once` every `interval_s` until cancelled; a failed pass (Redis down, catalogue unreadable) is
    logged and the next one tries again."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await reap_once(engine)
        except (OmnirecError, redis.RedisError, OSError) as exc:
            log.warning("abandoned coupon holds not reaped this pass: %s", exc)
