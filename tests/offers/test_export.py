"""The ledger export: what `marketing_states` read comes back as the same histories and wallets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import pyarrow.parquet as pq

from omnirec.domain.vocab import Channel
from omnirec.offers.export import CONTACTS_FILE, COUPONS_FILE, COUPONS_SCHEMA, export_ledger, history, wallet
from omnirec.offers.store import Contact, ContactHistory, Coupon, Wallet

NOW = 1_800_000_000.0
SINCE = NOW - 7 * 86_400
STATES = {
    "a": (ContactHistory((Contact(SINCE + 10, Channel.APP, "o1", "d1"), Contact(SINCE + 20, Channel.WEB, "", "s1")),
                         SINCE),
          Wallet((Coupon("c1", "a", "o1", "d1", SINCE, NOW + 100, 5.0, SINCE + 50, "r1"),
                  Coupon("c2", "a", "o2", "d2", SINCE + 1, NOW + 100)), NOW)),
    "b": (ContactHistory((), SINCE), Wallet((), NOW)),
}


def marketing(ids: Sequence[str], since: float, now: float, wallets: bool) -> list[tuple[ContactHistory, Wallet]]:
    assert (since, now, wallets) == (SINCE, NOW, True)
    return [STATES[m] for m in ids]


def test_coupon_columns_are_the_coupon_fields() -> None:
    assert COUPONS_SCHEMA.names == [f.name for f in fields(Coupon)]


def test_export_reads_back_as_the_same_histories_and_wallets(tmp_path: Path) -> None:
    export_ledger(marketing, ["a", "b"], SINCE, NOW, tmp_path, chunk=1)
    contacts = pq.read_table(tmp_path / CONTACTS_FILE).to_pylist()
    coupons = pq.read_table(tmp_path / COUPONS_FILE).to_pylist()
    for member, (expected_history, expected_wallet) in STATES.items():
        assert history([r for r in reversed(contacts) if r["member_id"] == member], SINCE) == expected_history
        assert wallet([r for r in coupons if r["member_id"] == member], NOW) == expected_wallet
    assert history(None, SINCE) == ContactHistory((), SINCE) and wallet(None, NOW) == Wallet((), NOW)
