"""The contact ledgers and wallets of a chunk of members, for audiences: one raw round trip and a bulk decode.

`OfferStore.marketing_states` reads the same keys through a redis-py pipeline and parses member by member:
about 10 us of Python per command and per member, most of an audience's cost at a million members. Here
the chunk's commands are built as one Arrow column (`feature_store.resp`), their replies parsed by hiredis,
and the contacts decoded by `offers.store.parse_contact_columns` (the offers module's bulk twin of its
per-member parser); only non-empty wallets are parsed, by the offers module's own `parse_wallet`. On a
Redis Cluster the pipeline path stays (its keys need routing by slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from omnirec.audience.builder import LedgerReader
from omnirec.feature_store import resp
from omnirec.feature_store.errors import redis_unavailable
from omnirec.feature_store.keys import key_column
from omnirec.offers.store import ContactColumns, OfferStore, Wallet, parse_contact_columns, parse_wallet


def ledger_reader(store: OfferStore) -> LedgerReader:
    """What `AudienceSources.ledger` reads with, for `store`'s Redis."""
    client = store.sync_client
    if client is None or not resp.supports_round_trip(client):
        return lambda ids, since, now, wallets: _converted(store, ids, since, now, wallets)
    keys = store.keys

    def read(member_ids: Sequence[str], since: float, now: float,
             wallets: bool) -> tuple[ContactColumns, Sequence[Wallet]]:
        n = len(member_ids)
        column = pa.array(list(member_ids), pa.string())
        commands = [resp.command("ZRANGEBYSCORE", key_column(keys.contacts, column), resp.const(repr(float(since))),
                                 resp.const("+inf"), resp.const("WITHSCORES"))]
        if wallets:
            commands.append(resp.command("HGETALL", key_column(keys.wallet, column)))
        with redis_unavailable("read marketing state"):
            replies = resp.round_trip(client, pa.concat_arrays(commands))  # type: ignore[arg-type]
        contacts = parse_contact_columns(member_ids, keys.contacts, [_pairs(r) for r in replies[:n]], since)
        empty = Wallet((), now)
        if not wallets:
            return contacts, [empty] * n
        return contacts, [parse_wallet(keys.wallet(m), _mapping(r), now) if r else empty
                          for m, r in zip(member_ids, replies[n:], strict=True)]

    return read


def _converted(store: OfferStore, member_ids: Sequence[str], since: float, now: float,
               wallets: bool) -> tuple[ContactColumns, Sequence[Wallet]]:
    states = store.marketing_states(member_ids, since, now, wallets)
    return ContactColumns.of([h for h, _ in states], since), [w for _, w in states]


def _pairs(reply: list[Any]) -> list[Any]:
    """A `WITHSCORES` reply as (entry, score) pairs: RESP3 sends them so, RESP2 flat."""
    if not reply or isinstance(reply[0], list):
        return reply
    return list(zip(reply[0::2], map(float, reply[1::2]), strict=True))


def _mapping(reply: dict[bytes, bytes] | list[bytes]) -> dict[bytes, bytes]:
    """An `HGETALL` reply as a dict: RESP3 sends one, RESP2 a flat list."""
    return reply if isinstance(reply, dict) else dict(zip(reply[0::2], reply[1::2], strict=True))
