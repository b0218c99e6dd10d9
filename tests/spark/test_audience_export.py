"""The Spark audience's driver-side export (`audience.spark.export_inputs`): every member's factors,
profile and ledger rows reach the files, while the driver's own allocations stay the size of a chunk, not
of the member count (at 50M members a copy of the ids and a list of their strings would be gigabytes)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from omnirec.audience.builder import AudienceSources, FactorModel
from omnirec.audience.model import AudienceRequest
from omnirec.audience.spark import CONTACTS_FILE, FACTORS_FILE, PROFILES_FILE, export_inputs
from omnirec.domain.idmap import IdMap
from omnirec.domain.vocab import Channel
from omnirec.offers.catalogue import Catalogue
from omnirec.offers.store import Contact, ContactHistory, Wallet

MEMBERS, CHUNK, DIM, NOW = 200_000, 4_096, 4, 1.7e9  # CHUNK: also export_ledger's


def test_export_streams_members_in_chunks(tmp_path: Path) -> None:
    ids = np.char.add("member-", np.arange(MEMBERS).astype(str))
    factors = np.arange(MEMBERS * DIM, dtype=np.float32).reshape(MEMBERS, DIM)
    model = FactorModel("v1", IdMap.from_ids(ids), factors, IdMap.from_ids(["i1"]), np.ones((1, DIM), np.float32))
    asked: list[int] = []

    def profiles(batch: Sequence[str]) -> tuple[int, list[None]]:
        asked.append(len(batch))
        return 7, [None] * len(batch)

    def marketing(batch: Sequence[str], since: float, now: float, wallets: bool
                  ) -> list[tuple[ContactHistory, Wallet]]:
        asked.append(len(batch))
        return [(ContactHistory((Contact(now - 1, Channel.APP, "o", "d"),) if m.endswith("7") else (), since),
                 Wallet((), now)) for m in batch]

    request = AudienceRequest(channel=Channel.APP, max_size=10)
    catalogue = Catalogue(version="c", offers=())
    few = FactorModel("v0", IdMap.from_ids(ids[:10]), factors[:10], model.items, model.item_factors)
    export_inputs(request, None, AudienceSources(few, None, catalogue, lambda target: (), profiles, marketing),
                  NOW - 86_400, NOW, tmp_path / "warm-up", chunk=CHUNK)  # its lazy imports, not traced below
    asked.clear()
    sources = AudienceSources(model, None, catalogue, lambda target: (), profiles, marketing)
    tracemalloc.start()
    try:
        generation = export_inputs(request, None, sources, NOW - 86_400, NOW, tmp_path, chunk=CHUNK)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert generation == 7
    assert max(asked) <= CHUNK
    exported = pq.read_table(tmp_path / FACTORS_FILE)
    assert exported["member_id"].to_pylist() == ids.tolist()
    np.testing.assert_array_equal(np.stack(exported["factors"].to_numpy(zero_copy_only=False)), factors)
    assert pq.read_table(tmp_path / PROFILES_FILE).num_rows == 0
    contacts = pq.read_table(tmp_path / CONTACTS_FILE)["member_id"].to_pylist()
    assert contacts == [m for m in ids.tolist() if m.endswith("7")]
    # the ids alone are 200,000 x 13 characters: 10 MB as a fixed-width copy, ~14 MB as a list of strings
    assert peak < 3_000_000, f"export_inputs peaked at {peak:,} B of Python allocations"
