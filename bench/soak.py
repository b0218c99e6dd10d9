"""Soak run: minutes of mixed traffic on a real `omnirec serve` while Redis restarts and a worker is killed.

    .venv/bin/python bench/soak.py --minutes 10

Set-up (all under `--dir`, default var/soak, on a private redis-server on its own port, never the shared
one): a simulated retailer (`--members`, `--items`), a model trained and published by the real pipeline,
features materialised, and the example offer catalogue with every budget cut to `--budget` coupons so the
budgets are reached. `omnirec serve` runs with 2 workers. `--users` concurrent clients then send, for
`--minutes`: Recommend (40%), TrackEvents (30%, 1-5 new events each; one call in ten with a 5 ms deadline
that expires mid-write), NextBestOffer (15%), DecideCoupon (10%) and RedeemCoupon (5%, of coupons issued
earlier). A client retries a TrackEvents batch that failed until it is answered, as the contract asks.
At a third of the run Redis is restarted (SHUTDOWN SAVE, down for `--redis-down-s`, started again on its
dump); at two thirds one serving worker gets SIGKILL.

Reports calls and errors by status code per RPC, events sent vs events in the event log (as
`omnirec train` reads it) and in Redis (their dedup claims), which must be equal, and coupons issued vs
budget per offer. Prints a table and writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq

from omnirec.domain import LifecycleRules, TierLadder
from omnirec.domain.readers import read_event_log
from omnirec.feature_store.config import RedisConfig
from omnirec.feature_store.keys import Keys
from omnirec.feature_store.materialize import materialize
from omnirec.feature_store.private_server import PrivateRedis, free_port
from omnirec.simulator import SimulationConfig, simulate
from omnirec.training.config import TrainConfig
from omnirec.training.pipeline import train
from omnirec.v1 import common_pb2, events_pb2, events_pb2_grpc, offers_pb2, offers_pb2_grpc
from omnirec.v1 import recommendation_pb2 as rec
from omnirec.v1 import recommendation_pb2_grpc as rec_grpc

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "soak.json"
KEY = "soak-app-key"
MD = (("x-api-key", KEY),)
NAMESPACE = "soak"
MIX = (("Recommend", 40), ("TrackEvents", 30), ("NextBestOffer", 15), ("DecideCoupon", 10), ("RedeemCoupon", 5))


def prepare(args: argparse.Namespace, redis: PrivateRedis) -> tuple[Path, list[str], list[str], dict[str, int]]:
    """Data, bundle, features, a catalogue with small budgets and the serve config; returns the config path,
    member ids, item ids and the budget (max coupons) per offer."""
    data, bundles = args.dir / "data", args.dir / "models"
    if not (data / "events.parquet").exists():
        print(f"simulating {args.members:,} members, {args.items:,} items ...", flush=True)
        simulate(SimulationConfig(n_members=args.members, n_items=args.items, seed=11), data, progress=False)
    if not (bundles / "current").exists():
        print("training ...", flush=True)
        train(data, TrainConfig(bundle_root=bundles), force=True, progress=False)
    config = RedisConfig(url=redis.url, namespace=NAMESPACE)
    print("materialising ...", flush=True)
    materialize(data, config, TierLadder(), LifecycleRules(), progress=False)
    catalogue = (ROOT / "omnirec/offers/examples/catalogue.toml").read_text()
    catalogue = re.sub(r"max_count = \d+", f"max_count = {args.budget}", catalogue)
    (args.dir / "catalogue.toml").write_text(catalogue)
    budgets = {m.group(1): args.budget for m in re.finditer(r'^id = "([^"]+)"', catalogue, re.M)}
    path = args.dir / "omnirec.toml"
    path.write_text(f"""data_dir = "{data}"
[train]
bundle_root = "{bundles}"
[redis]
url = "{redis.url}"
namespace = "{NAMESPACE}"
[offers]
catalogue_path = "{args.dir / 'catalogue.toml'}"
decision_log_dir = "{args.dir / 'decisions'}"
[service]
host = "127.0.0.1"
port = {args.port}
workers = 2
event_log_dir = "{args.dir / 'events_live'}"
[service.api_keys]
"{KEY}" = "admin"
""")
    members = pq.read_table(data / "members.parquet", columns=["member_id"])["member_id"].to_pylist()
    items = pq.read_table(data / "items.parquet", columns=["item_id"])["item_id"].to_pylist()
    return path, members, items, budgets


class Traffic:
    """The clients' shared tally: calls and codes per RPC, events taken, coupons issued."""

    def __init__(self, channel: grpc.aio.Channel, members: list[str], items: list[str]) -> None:
        self.rec = rec_grpc.RecommendationServiceStub(channel)
        self.events = events_pb2_grpc.EventServiceStub(channel)
        self.offers = offers_pb2_grpc.OfferServiceStub(channel)
        self.members, self.items = members, items
        self.codes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.sent: set[str] = set()
        self.coupons: list[tuple[str, str]] = []
        self.issued: collections.Counter[str] = collections.Counter()
        self._next_event = 0

    async def _call(self, rpc: str, method, request, timeout: float = 2.0):  # type: ignore[no-untyped-def]
        try:
            reply = await method(request, metadata=MD, timeout=timeout)
            self.codes[rpc]["OK"] += 1
            return reply
        except grpc.aio.AioRpcError as exc:
            self.codes[rpc][exc.code().name] += 1
            return None

    def _batch(self) -> events_pb2.TrackEventsRequest:
        events = []
        for _ in range(random.randint(1, 5)):
            self._next_event += 1
            purchase = random.random() < 0.3
            events.append(events_pb2.Event(
                event_id=f"soak-{os.getpid()}-{self._next_event}", member_id=random.choice(self.members),
                item_id=random.choice(self.items), store_id="s0000" if purchase else "",
                channel=common_pb2.CHANNEL_POS if purchase else common_pb2.CHANNEL_APP,
                event_type=events_pb2.EVENT_TYPE_PURCHASE if purchase else events_pb2.EVENT_TYPE_VIEW,
                quantity=1, price_minor_units=random.randint(100, 5000) if purchase else 0))
        return events_pb2.TrackEventsRequest(events=events)

    async def track(self, stop_at: float) -> None:
        batch = self._batch()
        timeout = 0.005 if random.random() < 0.1 else 2.0  # one in ten expires mid-write
        while True:  # the contract: retry until answered; dedup makes it exactly once
            if await self._call("TrackEvents", self.events.TrackEvents, batch, timeout) is not None:
                self.sent.update(e.event_id for e in batch.events)
                return
            timeout = 2.0
            if time.monotonic() > stop_at + 60:
                raise RuntimeError("TrackEvents kept failing after the run ended")
            await asyncio.sleep(0.2)

    async def one(self, stop_at: float) -> None:
        rpc = random.choices([m for m, _ in MIX], [w for _, w in MIX])[0]
        member = random.choice(self.members)
        if rpc == "Recommend":
            await self._call(rpc, self.rec.Recommend, rec.RecommendRequest(
                member_id=member, channel=common_pb2.CHANNEL_APP, k=10, exclude_purchased=True))
        elif rpc == "TrackEvents":
            await self.track(stop_at)
        elif rpc == "NextBestOffer":
            await self._call(rpc, self.offers.NextBestOffer, offers_pb2.NextBestOfferRequest(
                member_id=member, channel=common_pb2.CHANNEL_APP, k=3))
        elif rpc == "DecideCoupon":
            reply = await self._call(rpc, self.offers.DecideCoupon, offers_pb2.DecideCouponRequest(
                request_id=f"soak-{os.getpid()}-{time.monotonic_ns()}", member_id=member,
                channel=common_pb2.CHANNEL_APP, basket_value_minor_units=10_000))
            if reply is not None and reply.issued and not reply.replayed:
                self.coupons.append((reply.coupon_id, member))
                self.issued[reply.offer_id] += 1
        elif self.coupons:
            coupon_id, owner = random.choice(self.coupons)
            await self._call(rpc, self.offers.RedeemCoupon, offers_pb2.RedeemCouponRequest(
                coupon_id=coupon_id, member_id=owner, channel=common_pb2.CHANNEL_APP,
                order_value_minor_units=20_000))


async def _user(traffic: Traffic, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        await traffic.one(stop_at)


def _workers(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def _faults(redis: PrivateRedis, serve: subprocess.Popen[bytes], seconds: float, down_s: float,
                  log: list[str]) -> None:
    await asyncio.sleep(seconds / 3)
    log.append(f"{time.strftime('%H:%M:%S')} Redis: SHUTDOWN SAVE, down for {down_s:.0f} s")
    redis.stop()  # on the main thread: the server dies with the thread that started it (PR_SET_PDEATHSIG)
    await asyncio.sleep(down_s)
    redis.start()
    log.append(f"{time.strftime('%H:%M:%S')} Redis: started again on its dump")
    await asyncio.sleep(seconds / 3 - down_s)
    victim = _workers(serve.pid)[0]
    os.kill(victim, signal.SIGKILL)
    log.append(f"{time.strftime('%H:%M:%S')} SIGKILL to worker pid {victim}")


async def soak(args: argparse.Namespace, redis: PrivateRedis, serve: subprocess.Popen[bytes], members: list[str],
               items: list[str]) -> tuple[Traffic, list[str]]:
    faults: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{args.port}") as channel:
        traffic = Traffic(channel, members, items)
        seconds = args.minutes * 60
        stop_at = time.monotonic() + seconds
        await asyncio.gather(_faults(redis, serve, seconds, args.redis_down_s, faults),
                             *(_user(traffic, stop_at) for _ in range(args.users)))
    return traffic, faults


def _wait_healthy(port: int, serve: subprocess.Popen[bytes]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(600):
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if serve.poll() is not None:
                raise RuntimeError("omnirec serve exited")
            time.sleep(0.2)
    raise RuntimeError("omnirec serve did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--budget", type=int, default=60, help="max coupons per offer")
    parser.add_argument("--redis-down-s", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=ROOT / "var" / "soak")
    args = parser.parse_args()
    args.port = free_port()
    args.dir.mkdir(parents=True, exist_ok=True)
    for old in (args.dir / "events_live", args.dir / "decisions"):
        for f in old.glob("*") if old.exists() else ():
            f.unlink()
    redis = PrivateRedis(dbfile=args.dir / "redis" / "dump.rdb")
    (args.dir / "redis" / "dump.rdb").unlink(missing_ok=True)
    redis.start()
    serve = None
    try:
        config, members, items, budgets = prepare(args, redis)
        log = open(args.dir / "serve.log", "wb")  # noqa: SIM115 (the server writes it until it exits)
        serve = subprocess.Popen([str(Path(sys.executable).parent / "omnirec"), "serve"],
                                 env={**os.environ, "OMNIREC_CONFIG": str(config)}, stdout=log, stderr=log)
        _wait_healthy(args.port, serve)
        print(f"soak: {args.minutes:g} min, {args.users} clients, port {args.port}, Redis {redis.url}", flush=True)
        traffic, faults = asyncio.run(soak(args, redis, serve, members, items))
        serve.send_signal(signal.SIGTERM)
        serve_code = serve.wait(60)
        logged = read_event_log(args.dir / "events_live")
        with redis.client() as client:
            claims = sum(1 for _ in client.scan_iter(match=Keys(NAMESPACE).seen("*", "event_id:soak-*"), count=10_000))
            issued = {o: int(client.hget(Keys(NAMESPACE).offer_budget(o), "issued") or 0) for o in budgets}
    finally:
        if serve is not None and serve.poll() is None:
            serve.kill()
        redis.stop()
    report(args, traffic, faults, serve_code, logged.num_rows, claims, issued, budgets)


def report(args: argparse.Namespace, traffic: Traffic, faults: list[str], serve_code: int, logged: int,
           claims: int, issued: dict[str, int], budgets: dict[str, int]) -> None:
    print("\nfaults:", *faults, sep="\n  ")
    codes = sorted({c for counter in traffic.codes.values() for c in counter})
    print(f"\n| RPC | calls | {' | '.join(codes)} |")
    print(f"|---|---:|{'---:|' * len(codes)}")
    for rpc, _ in MIX:
        counter = traffic.codes[rpc]
        print(f"| {rpc} | {sum(counter.values()):,} | " + " | ".join(f"{counter[c]:,}" for c in codes) + " |")
    sent = len(traffic.sent)
    print(f"\nevents sent (answered) {sent:,}; in the event log {logged:,}; in Redis (claims) {claims:,}: "
          f"{'EQUAL' if sent == logged == claims else 'MISMATCH'}")
    print("\n| offer | coupons issued (Redis) | seen by clients | budget |\n|---|---:|---:|---:|")
    for offer, budget in budgets.items():
        print(f"| {offer} | {issued[offer]:,} | {traffic.issued[offer]:,} | {budget:,} |")
    print(f"\nomnirec serve exit code after SIGTERM: {serve_code}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "minutes": args.minutes, "users": args.users, "members": args.members, "items": args.items,
        "faults": faults, "calls": {rpc: dict(traffic.codes[rpc]) for rpc, _ in MIX},
        "events": {"sent": sent, "log": logged, "redis": claims},
        "coupons": {o: {"issued": issued[o], "clients": traffic.issued[o], "budget": budgets[o]} for o in budgets},
        "serve_exit_code": serve_code}, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
