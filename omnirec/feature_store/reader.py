"""`FeatureReader`: everything one request needs in one pipelined round trip, with explicit misses.

Each read is planned once (`ReadPlans`, no I/O) and executed by a synchronous `FeatureReader` (jobs, the
offers engine) or an `AsyncFeatureReader` (the service's event loop), so the two never drift apart.

Each request pipeline starts with `HMGET pointer generation schema` and reads the features under the
generation the reader last saw. When the pointer names another generation (a load just switched), the
request is read again under the new one: one extra round trip per switch, never a mix of generations.
The previous generation stays readable for `old_generation_ttl_s` after a switch, so the first read is
itself consistent. The hottest read, a member's purchased list alone, is one `EVAL` that returns the
pointer and the list together on one Redis, sent on the asyncio reader's pipelined connection
(`feature_store.pipelined`); on a cluster it is the pointer and a `GET` in one pipeline like the others.

Anonymous requests: the identity link is read in the same round trip; when it names a member, that
member's features need a second round trip (only then).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import numpy as np
import pyarrow as pa
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from omnirec.domain.member_lists import MalformedLists, MemberLists, decode
from omnirec.domain.vocab import ONLINE_STORE
from omnirec.feature_store import resp
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.errors import FeatureStoreError, NotMaterialised, redis_call
from omnirec.feature_store.keys import SCHEMA_VERSION, Keys, key_column
from omnirec.feature_store.model import ItemFeatures, MemberProfile, ProfileColumns, parse_stock
from omnirec.feature_store.packed import unpack, unpack_timed
from omnirec.feature_store.pipelined import PipelinedConnection

Pipeline = Any
"""A redis-py pipeline, synchronous or asyncio: both queue commands through the same methods."""
T = TypeVar("T")
Extra = Callable[["Batch", Keys], None]
"""Reads another module adds to a request's round trip; given the keys of the generation being read."""

_ANY_IN_STOCK = """
local stock, key_at, arg_at, out = KEYS[1], 2, 2, {}
local function stocked(id) return (tonumber(redis.call('HGET', stock, id) or '0') or 0) > 0 end
for g = 1, tonumber(ARGV[1]) do
  local n_ids, n_lists, found = tonumber(ARGV[arg_at]), tonumber(ARGV[arg_at + 1]), 0
  for i = 1, n_ids do
    if found == 0 and stocked(ARGV[arg_at + 1 + i]) then found = 1 end
  end
  for i = 0, n_lists - 1 do
    local list = found == 0 and redis.call('GET', KEYS[key_at + i])
    if list then
      for id in string.gmatch(list, "[^\\031]+") do
        if stocked(id) then found = 1 break end
      end
    end
  end
  arg_at, key_at, out[g] = arg_at + 2 + n_ids, key_at + n_lists, found
end
return out
"""
"""KEYS: stock hash, then the item lists of every selection. ARGV: number of selections, then per selection
its number of ids, its number of lists and the ids. Stops at the first item in stock, so a category of
thousands of items costs a few lookups inside Redis and nothing on the wire."""


_POINTER_AND_GET = "return {redis.call('HMGET', KEYS[1], 'generation', 'schema'), redis.call('GET', KEYS[2])}"
"""KEYS: the pointer, one value under the generation the reader last saw. The pointer and the value in one
command: on a single Redis the hot one-key reads (a member's purchased list) cost the client one command
instead of a two-command pipeline, which is most of their CPU time in redis-py."""

@dataclass(frozen=True)
class ItemSelection:
    """Items named by id, category or brand (what an offer targets)."""

    item_ids: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()

    def lists(self, k: Keys) -> list[str]:
        return [*(k.category_items(c) for c in self.categories), *(k.brand_items(b) for b in self.brands)]


@dataclass(frozen=True)
class MemberFeatures:
    """A member's part of a request; `profile` is None when the member is not in the store."""

    member_id: str
    profile: MemberProfile | None
    recent_items: tuple[str, ...]
    """Newest first, distinct, at most `recent_items` long."""
    purchased: Mapping[str, int]
    """Item -> unix seconds of its last purchase, most recent first, at most `purchased_items` long."""
    top_lists: MemberLists | None = None
    """The member's precomputed lists (`member_top`), when asked for and stored."""

    @property
    def purchased_items(self) -> frozenset[str]:
        return frozenset(self.purchased)


@dataclass(frozen=True)
class RequestFeatures:
    generation: int
    member_id: str | None
    """The member the request is about: given, or resolved from `anonymous_id`; None if unknown."""
    anonymous_id: str | None
    resolved_from_anonymous: bool
    member: MemberFeatures | None
    """None for an anonymous visitor with no known link."""
    anonymous_recent_items: tuple[str, ...]
    """Items seen under `anonymous_id` while it was not linked (empty when a member id is known)."""
    store_id: str
    """Where stock was read: the given store, or `ONLINE_STORE`."""
    items: Mapping[str, ItemFeatures | None]
    """Requested item -> its features, None when the item is not in the store."""
    stock: Mapping[str, int]
    """Requested item -> units on hand at `store_id` (0: none or not carried)."""
    selections_in_stock: tuple[bool, ...] = ()
    """Per requested selection: some item of it is in stock at `store_id`."""

    @property
    def profile(self) -> MemberProfile | None:
        return self.member.profile if self.member else None

    @property
    def recent_items(self) -> tuple[str, ...]:
        return self.member.recent_items if self.member else self.anonymous_recent_items

    def in_stock(self, item_id: str) -> bool:
        return self.stock.get(item_id, 0) > 0


class _Recorder:
    """Stands in for a pipeline while reads are planned: records each command to replay on a real one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, command: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((command, args, kwargs))

        return record

    def replay(self, pipe: Pipeline) -> Pipeline:
        for command, args, kwargs in self.calls:
            getattr(pipe, command)(*args, **kwargs)
        return pipe


class Batch:
    """The reads of one round trip and their parsers, run in queueing order; no I/O of its own, so the
    synchronous and the asyncio reader execute the same plans. Other owners of Redis state (the offers
    store) add their reads to a request's batch through `read_request(extra=...)`."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.pipe = _Recorder()
        self.parsers: list[tuple[int, Callable[[list[Any]], None]]] = []

    def add(self, n_commands: int, parse: Callable[[list[Any]], None]) -> None:
        self.parsers.append((n_commands, parse))

    def execute(self, client: Any) -> list[Any]:
        """The replies of this round trip on a synchronous client: one command is sent alone (a pipeline of
        one costs redis-py about twice the CPU of the command), more in one non-transactional pipeline."""
        if len(self.pipe.calls) == 1:
            command, args, kwargs = self.pipe.calls[0]
            return [getattr(client, command)(*args, **kwargs)]
        return self.pipe.replay(client.pipeline(transaction=False)).execute()  # type: ignore[no-any-return]

    def execute_raw(self, client: Any) -> list[Any]:
        """`execute` on one Redis for a round trip whose replies need no redis-py callback (`raw_commands`):
        packed by hiredis and read by `resp.round_trip_packed`. An audience's chunk of 4,096 profile keys
        cost redis-py about 0.6 us per key to pack; other batches, and clusters, take `execute`."""
        raw = self.raw_commands() if resp.supports_round_trip(client) else None
        if raw is None:
            return self.execute(client)
        return resp.round_trip_packed(client, b"".join(hiredis.pack_command(c) for c in raw), len(raw))

    async def execute_async(self, client: Any, pipelined: PipelinedConnection | None = None,
                            every: bool = False) -> list[Any]:
        """`execute` on an asyncio client; a round trip of one `EVAL` goes on `pipelined` when given (its reply
        is the script's, as redis-py returns it: no reply callback applies to EVAL), and with `every` so does
        any round trip of only `GET`, `HMGET` and `EVAL` (whose replies redis-py returns as Redis sends them)."""
        if pipelined is not None and len(self.pipe.calls) == 1 and self.pipe.calls[0][0] == "eval":
            return [await pipelined.execute("EVAL", *self.pipe.calls[0][1])]
        if pipelined is not None and every and (raw := self.raw_commands()) is not None:
            return await pipelined.execute_many(raw)  # type: ignore[no-any-return]
        # not on an asyncio cluster client: its direct commands fail under concurrent decisions (connections
        # read as closed by the server, tests/offers/test_offer_cluster.py), its pipelines do not
        if len(self.pipe.calls) == 1 and not isinstance(client, AsyncRedisCluster):
            command, args, kwargs = self.pipe.calls[0]
            return [await getattr(client, command)(*args, **kwargs)]
        return await _round_trip(self.pipe.replay(client.pipeline(transaction=False)))

    def raw_commands(self) -> list[tuple[Any, ...]] | None:
        """The round trip as Redis commands when each one's reply needs no redis-py callback, else None."""
        out: list[tuple[Any, ...]] = []
        for command, args, kwargs in self.pipe.calls:
            if kwargs or command not in _RAW:
                return None
            out.append(_RAW[command](*args))
        return out

    def parse(self, replies: list[Any]) -> None:
        at = 0
        for n, parse in self.parsers:
            parse(replies[at:at + n])
            at += n


_RAW: dict[str, Callable[..., tuple[Any, ...]]] = {
    "get": lambda key: ("GET", key),
    "mget": lambda keys: ("MGET", *keys),
    "hmget": lambda key, fields: ("HMGET", key, *fields),
    "eval": lambda script, n_keys, *keys_and_args: ("EVAL", script, n_keys, *keys_and_args),
}
"""redis-py's methods whose replies it returns as sent, as the commands they send."""


async def _round_trip(pipe: Any) -> list[Any]:
    """The pipeline's commands in one write and their replies, parsed as redis-py parses them. On one
    Redis without retries this skips `Pipeline.execute`'s machinery (retry wrapper, multi-key command
    preparation, observability hooks), about a third of the client's CPU time for a request's read; a
    connection whose replies were not all read (an error, a cancelled request) is dropped, never reused."""
    retry = pipe.get_retry() if isinstance(pipe, AsyncPipeline) else None
    if retry is None or retry.get_retries():
        return await pipe.execute()  # type: ignore[no-any-return]
    pool = pipe.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(conn.pack_commands([args for args, _ in pipe.command_stack]))
        return [await pipe.parse_response(conn, args[0], **options) for args, options in pipe.command_stack]
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


Plan = Generator[Batch, None, T]
"""A read as a generator: it yields each round trip's batch and returns the result once all are parsed."""


def parse_pointer(keys: Keys, raw: Sequence[bytes | None]) -> int:
    """The generation to serve, or `FeatureStoreError` when nothing usable is materialised."""
    generation, schema = raw
    if generation is None:
        raise NotMaterialised(f"{keys.pointer()}: no materialised features (run `omnirec materialize`)")
    try:
        gen, version = int(generation), int(schema or b"-1")
    except ValueError:
        raise FeatureStoreError(f"{keys.pointer()}: malformed pointer {generation!r}/{schema!r}") from None
    if version != keys.schema:
        raise FeatureStoreError(f"{keys.pointer()}: data has schema v{version}, this reader expects v{keys.schema}")
    return gen


def parse_purchased(key: str, raw: bytes | None) -> dict[str, int]:
    """A purchased list (`packed.unpack_timed`), or `FeatureStoreError` naming the key when malformed."""
    try:
        return unpack_timed(raw)
    except ValueError as exc:
        raise FeatureStoreError(f"{key}: malformed purchased list ({exc})") from None


def _top_lists(key: str, raw: bytes | None) -> MemberLists | None:
    if raw is None:
        return None
    try:
        return decode(raw)
    except MalformedLists as exc:
        raise FeatureStoreError(f"{key}: malformed member lists ({exc})") from None


def _queue_selection_lists(batch: Batch, selections: Sequence[ItemSelection], lists: list[list[str]],
                           out: dict[str, Any], name: str) -> None:
    """GET every selection's category and brand lists; `out[name]` = each selection's own item ids and its
    lists' ids, in order, without repeats."""
    for keys in lists:
        for key in keys:
            batch.pipe.get(key)

    def parse(r: list[Any]) -> None:
        at, found = 0, []
        for s, keys in zip(selections, lists, strict=True):
            ids = dict.fromkeys(s.item_ids)
            for raw in r[at:at + len(keys)]:
                ids.update(dict.fromkeys(unpack(raw)))
            at += len(keys)
            found.append(tuple(ids))
        out[name] = found

    batch.add(sum(map(len, lists)), parse)


@functools.lru_cache(maxsize=64)
def _any_in_stock_call(k: Keys, store: str, selections: tuple[ItemSelection, ...]) -> tuple[list[str], list[object]]:
    """`_ANY_IN_STOCK`'s keys and arguments: the same for every request of one generation, store and set of
    selections (an offer catalogue's targets), so built once, not per request."""
    keys, args = [k.stock(store)], [len(selections)]
    for s in selections:
        lists = s.lists(k)
        keys += lists
        args += [len(s.item_ids), len(lists), *s.item_ids]
    return keys, args


class ReadPlans:
    """What each request-time read sends and how it parses the replies, shared by both readers."""

    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self.base = Keys(config.namespace, schema=SCHEMA_VERSION)
        self._generation: int | None = None
        self.cluster = config.cluster or (config.url or "").startswith("redis+cluster")

    def generation(self) -> Plan[int]:
        batch = Batch("read pointer")
        found: list[int] = []
        self._queue_pointer(batch, found)
        yield batch
        return found[0]

    def _queue_pointer(self, batch: Batch, found: list[int]) -> None:
        batch.pipe.hmget(self.base.pointer(), ["generation", "schema"])
        batch.add(1, lambda r: found.append(parse_pointer(self.base, r[0])))

    def _consistent(self, queue: Callable[[Batch, Keys], None], what: str) -> Plan[int]:
        """Run `queue`'s reads plus the pointer in one pipeline; re-run under a newer generation (3 tries)."""
        if self._generation is None:
            self._generation = yield from self.generation()
        for _ in range(3):
            generation = self._generation
            batch = Batch(what)
            found: list[int] = []
            self._queue_pointer(batch, found)
            queue(batch, self.base.at(generation))
            yield batch
            self._generation = found[0]
            if found[0] == generation:
                return generation
        raise FeatureStoreError(f"{what}: the generation kept changing during the read")

    def read_request(self, member_id: str | None = None, anonymous_id: str | None = None,
                     item_ids: Sequence[str] = (), store_id: str | None = None,
                     selections: Sequence[ItemSelection] = (), extra: Extra | None = None,
                     member_lists: bool = True, member_top: bool = False) -> Plan[RequestFeatures]:
        if not member_id and not anonymous_id:
            raise ValueError("read_request needs a member_id or an anonymous_id")
        store = store_id or ONLINE_STORE
        out: dict[str, Any] = {}

        def queue(batch: Batch, k: Keys) -> None:
            out.clear()
            if member_id:
                self._queue_member(batch, k, member_id, member_lists, out, member_top)
            else:
                batch.pipe.hget(k.identity(anonymous_id), "member_id")
                batch.pipe.get(k.anon_recent(anonymous_id))
                batch.add(2, lambda r: out.update(linked=r[0], anon_recent=tuple(unpack(r[1]))))
            self._queue_items(batch, k, list(item_ids), store, out)
            self._queue_selections(batch, k, selections, store, out, self.cluster)
            if extra is not None:
                extra(batch, k)

        generation = yield from self._consistent(queue, "read_request")
        resolved = None
        if not member_id and out["linked"] is not None:
            resolved = out["linked"].decode()

            def queue_linked(batch: Batch, k: Keys) -> None:
                out.update(anon_recent=())
                self._queue_member(batch, k, resolved, member_lists, out, member_top)
                self._queue_items(batch, k, list(item_ids), store, out)  # again: one generation per answer
                self._queue_selections(batch, k, selections, store, out, self.cluster)
                if extra is not None:
                    extra(batch, k)

            generation = yield from self._consistent(queue_linked, "read_request")
        yield from self._selections_in_stock(self.base.at(generation), store, out)
        who = member_id or resolved
        return RequestFeatures(
            generation=generation, member_id=who, anonymous_id=anonymous_id,
            resolved_from_anonymous=resolved is not None, member=out.get("member"),
            anonymous_recent_items=out.get("anon_recent", ()), store_id=store, items=out["items"],
            stock=out["stock"], selections_in_stock=out["selections"])

    @staticmethod
    def _queue_member(batch: Batch, k: Keys, member_id: str, lists: bool, out: dict[str, Any],
                      top: bool = False) -> None:
        batch.pipe.get(k.member(member_id))
        if lists:
            batch.pipe.get(k.recent(member_id))
            batch.pipe.get(k.purchased(member_id))
        if top:
            batch.pipe.get(k.member_top(member_id))

        def parse(r: list[Any]) -> None:
            profile = MemberProfile.from_packed(member_id, k.member(member_id), r[0]) if r[0] is not None else None
            out["member"] = MemberFeatures(
                member_id=member_id, profile=profile, recent_items=tuple(unpack(r[1])) if lists else (),
                purchased=parse_purchased(k.purchased(member_id), r[2]) if lists else {},
                top_lists=_top_lists(k.member_top(member_id), r[-1]) if top else None)

        batch.add(1 + (2 if lists else 0) + (1 if top else 0), parse)

    @staticmethod
    def _queue_items(batch: Batch, k: Keys, item_ids: list[str], store: str, out: dict[str, Any]) -> None:
        for item_id in item_ids:
            batch.pipe.hgetall(k.item(item_id))
        if item_ids:
            batch.pipe.hmget(k.stock(store), item_ids)

        def parse(r: list[Any]) -> None:
            out["items"] = {i: ItemFeatures.from_hash(i, k.item(i), raw) if raw else None
                            for i, raw in zip(item_ids, r, strict=False)}
            quantities = r[len(item_ids)] if item_ids else []
            out["stock"] = {i: parse_stock(k.stock(store), i, q) for i, q in zip(item_ids, quantities, strict=True)}

        batch.add(len(item_ids) + (1 if item_ids else 0), parse)

    @staticmethod
    def _queue_selections(batch: Batch, k: Keys, selections: Sequence[ItemSelection], store: str,
                          out: dict[str, Any], cluster: bool = False) -> None:
        out["selections"] = ()
        out.pop("selection_ids", None)
        if not selections:
            return
        lists = [s.lists(k) for s in selections]
        if cluster and any(lists):  # a list and the stock hash are two slots: read the lists now, the stock next
            _queue_selection_lists(batch, selections, lists, out, "selection_ids")
            return
        keys, args = _any_in_stock_call(k, store, tuple(selections))
        batch.pipe.eval(_ANY_IN_STOCK, len(keys), *keys, *args)
        batch.add(1, lambda r: out.update(selections=tuple(bool(f) for f in r[0])))

    @staticmethod
    def _selections_in_stock(k: Keys, store: str, out: dict[str, Any]) -> Plan[None]:
        """Redis Cluster, selections with category or brand lists: a second round trip checks the listed ids
        against the store's stock in the stock's slot (the same script, the ids sent as arguments)."""
        selection_ids = out.pop("selection_ids", None)
        if selection_ids is None:
            return
        args: list[object] = [len(selection_ids)]
        for ids in selection_ids:
            args += [len(ids), 0, *ids]
        batch = Batch("selections in stock")
        batch.pipe.eval(_ANY_IN_STOCK, 1, k.stock(store), *args)
        batch.add(1, lambda r: out.update(selections=tuple(bool(f) for f in r[0])))
        yield batch

    def selection_items(self, selections: Sequence[ItemSelection]) -> Plan[tuple[int, list[tuple[str, ...]]]]:
        """(generation, the item ids of each selection): the catalogue behind offer targets, read once per
        generation by its users (a category can hold thousands of items)."""
        out: dict[str, Any] = {}

        def queue(batch: Batch, k: Keys) -> None:
            _queue_selection_lists(batch, selections, [s.lists(k) for s in selections], out, "items")

        generation = yield from self._consistent(queue, "selection_items")
        return generation, out["items"]

    def profiles(self, member_ids: Sequence[str]) -> Plan[tuple[int, list[MemberProfile | None]]]:
        """Many members' profiles in one round trip (audiences), under one generation."""
        ids = list(member_ids)
        generation, k, raw = yield from self._member_records(ids)
        return generation, [None if value is None else MemberProfile.from_packed(m, k.member(m), value)
                            for m, value in zip(ids, raw, strict=True)]

    def profile_columns(self, member_ids: Sequence[str]) -> Plan[tuple[int, ProfileColumns]]:
        """`profiles`, decoded column-wise (`ProfileColumns`): what an audience's chunk of members reads."""
        ids = list(member_ids)
        generation, k, raw = yield from self._member_records(ids)
        return generation, ProfileColumns.from_packed(ids, k.member, raw)

    def _member_records(self, ids: list[str]) -> Plan[tuple[int, Keys, list[bytes | None]]]:
        """(generation, its keys, each member's packed record or None), in one round trip."""
        out: dict[str, Any] = {}

        cluster = self.config.cluster or (self.config.url or "").startswith("redis+cluster")

        def queue(batch: Batch, k: Keys) -> None:
            out.update(keys=k, raw=[])
            if not ids:  # the pointer alone (MGET takes a key at least)
                return
            if cluster:  # keys of many members span slots: one GET each (the cluster client groups them by node)
                for member_id in ids:
                    batch.pipe.get(k.member(member_id))
                batch.add(len(ids), lambda r: out.update(keys=k, raw=r))
            else:  # one MGET: a tenth of the client's per-command cost; the keys built by one Arrow kernel
                batch.pipe.mget(key_column(k.member, pa.array(ids, pa.string())).to_pylist())
                batch.add(1, lambda r: out.update(keys=k, raw=r[0]))

        generation = yield from self._consistent(queue, "profiles")
        return generation, out["keys"], list(out["raw"])

    def _consistent_get(self, key: Callable[[Keys], str], what: str) -> Plan[tuple[str, bytes | None]]:
        """(key, value) of one `GET` under the generation the pointer names, as `_consistent` reads; on a
        single Redis the pointer and the value come from one script call (one command), on a cluster they are
        in two slots, so in one pipeline."""
        if self.cluster:
            out: dict[str, Any] = {}

            def queue(batch: Batch, k: Keys) -> None:
                out["key"] = key(k)
                batch.pipe.get(out["key"])
                batch.add(1, lambda r: out.update(value=r[0]))

            yield from self._consistent(queue, what)
            return out["key"], out["value"]
        if self._generation is None:
            self._generation = yield from self.generation()
        pointer, found = self.base.pointer(), []
        for _ in range(3):
            generation = self._generation
            name = key(self.base.at(generation))
            batch = Batch(what)
            found.clear()
            batch.pipe.eval(_POINTER_AND_GET, 2, pointer, name)
            batch.add(1, lambda r: found.extend((parse_pointer(self.base, r[0][0]), r[0][1])))
            yield batch
            self._generation = found[0]
            if found[0] == generation:
                return name, found[1]
        raise FeatureStoreError(f"{what}: the generation kept changing during the read")

    def purchased(self, member_id: str) -> Plan[dict[str, int]]:
        key, raw = yield from self._consistent_get(lambda k: k.purchased(member_id), "purchased")
        return parse_purchased(key, raw)

    def in_stock(self, item_ids: Sequence[str], store_id: str | None = None) -> Plan[np.ndarray]:
        ids = list(item_ids)
        key_store = store_id or ONLINE_STORE
        if not ids:
            return np.zeros(0, bool)
            yield  # a plan with no round trip
        out: dict[str, Any] = {}

        def queue(batch: Batch, k: Keys) -> None:
            batch.pipe.hmget(k.stock(key_store), ids)
            batch.add(1, lambda r: out.update(keys=k, stock=r[0]))

        yield from self._consistent(queue, "in_stock")
        k, quantities = out["keys"], out["stock"]
        return np.array([parse_stock(k.stock(key_store), i, q) > 0 for i, q in zip(ids, quantities, strict=True)])

    def available_items(self, store_id: str | None = None) -> Plan[set[str]]:
        key_store = store_id or ONLINE_STORE
        out: dict[str, Any] = {}

        def queue(batch: Batch, k: Keys) -> None:
            batch.pipe.hgetall(k.stock(key_store))
            batch.add(1, lambda r: out.update(keys=k, stock=r[0]))

        yield from self._consistent(queue, "available_items")
        k, stock = out["keys"], out["stock"]
        return {i.decode() for i, q in stock.items() if parse_stock(k.stock(key_store), i.decode(), q) > 0}


class FeatureReader:
    """Request-time reads on a synchronous client. Thread-safe: one pipeline per round trip, shared pool."""

    def __init__(self, client: redis.Redis | RedisCluster, config: RedisConfig) -> None:
        self.client = client
        self.plans = ReadPlans(config)

    def _run(self, plan: Plan[T], raw: bool = False) -> T:
        try:
            batch = next(plan)
            while True:
                with redis_call(batch.what):
                    replies = batch.execute_raw(self.client) if raw else batch.execute(self.client)
                batch.parse(replies)
                batch = next(plan)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def read_request(self, member_id: str | None = None, anonymous_id: str | None = None,
                     item_ids: Sequence[str] = (), store_id: str | None = None,
                     selections: Sequence[ItemSelection] = (), extra: Extra | None = None,
                     member_lists: bool = True, member_top: bool = False) -> RequestFeatures:
        """All features of one request. `store_id` None reads online stock (app, mini-program, web);
        `selections`: which of them has an item in stock there; `extra`: reads another owner adds;
        `member_lists=False` leaves the recent and purchased lists out (empty): the profile is all offers need;
        `member_top` adds the member's precomputed lists (member state in the store)."""
        return self._run(self.plans.read_request(member_id, anonymous_id, item_ids, store_id, selections, extra,
                                                 member_lists, member_top))

    def profiles(self, member_ids: Sequence[str]) -> tuple[int, list[MemberProfile | None]]:
        """(generation, profile or None per member), one round trip: audiences read members in chunks."""
        return self._run(self.plans.profiles(member_ids))

    def profile_columns(self, member_ids: Sequence[str]) -> tuple[int, ProfileColumns]:
        """`profiles` column-wise, one round trip: an audience's chunk of members."""
        return self._run(self.plans.profile_columns(member_ids), raw=True)

    def selection_items(self, selections: Sequence[ItemSelection]) -> tuple[int, list[tuple[str, ...]]]:
        """(generation, the item ids of each selection): offer targets resolved in the feature store."""
        return self._run(self.plans.selection_items(selections))

    def in_stock(self, item_ids: Sequence[str], store_id: str | None = None) -> np.ndarray:
        """Boolean mask over `item_ids`: units on hand > 0 at `store_id` (online when None); one round trip."""
        return self._run(self.plans.in_stock(item_ids, store_id))

    def available_items(self, store_id: str | None = None) -> set[str]:
        """Every item with units on hand at `store_id` (online when None), for filtering candidates."""
        return self._run(self.plans.available_items(store_id))


class AsyncFeatureReader:
    """The same reads on an asyncio client, for the service's event loop (no thread hop per request).

    Bound the wait with `asyncio.timeout`: a cancelled read drops its connection, never reuses it half-read.
    """

    def __init__(self, client: AsyncRedis | AsyncRedisCluster, config: RedisConfig,
                 pipeline_every_read: bool = False) -> None:
        """`pipeline_every_read`: send every round trip of only `GET`, `HMGET` and `EVAL` on the pipelined
        connection (one Redis), not only a lone `EVAL` (the offers engine's reads)."""
        self.client = client
        self.plans = ReadPlans(config)
        self._pipelined = PipelinedConnection(config) if PipelinedConnection.supports(config) else None
        self._every = pipeline_every_read

    async def _run(self, plan: Plan[T]) -> T:
        try:
            batch = next(plan)
            while True:
                try:
                    replies = await batch.execute_async(self.client, self._pipelined, self._every)
                except redis.RedisError:  # translated as `redis_call` does; only a failure pays for its two
                    with redis_call(batch.what):  # context managers (a few us a read, the service's hottest path)
                        raise
                batch.parse(replies)
                batch = next(plan)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def read_request(self, member_id: str | None = None, anonymous_id: str | None = None,
                           item_ids: Sequence[str] = (), store_id: str | None = None,
                           selections: Sequence[ItemSelection] = (), extra: Extra | None = None,
                           member_lists: bool = True, member_top: bool = False) -> RequestFeatures:
        return await self._run(self.plans.read_request(member_id, anonymous_id, item_ids, store_id, selections,
                                                       extra, member_lists, member_top))

    async def selection_items(self, selections: Sequence[ItemSelection]) -> tuple[int, list[tuple[str, ...]]]:
        return await self._run(self.plans.selection_items(selections))

    async def purchased(self, member_id: str) -> dict[str, int]:
        """The member's purchased items -> unix seconds of the last purchase, most recent first (empty when
        none are stored); one round trip."""
        return await self._run(self.plans.purchased(member_id))

    async def in_stock(self, item_ids: Sequence[str], store_id: str | None = None) -> np.ndarray:
        return await self._run(self.plans.in_stock(item_ids, store_id))

    def close(self) -> None:
        """Close the pipelined connection (the client is its owner's to close)."""
        if self._pipelined is not None:
            self._pipelined.close()

