"""The contact ledger and the wallets as Parquet, for batch jobs that cannot ask Redis member by member
(the Spark audience job joins them to the members it scores).

Two files, read through `OfferStore.marketing_states` (one pipelined round trip per chunk of members), so
they hold exactly what the real-time rules read:

- `contacts.parquet`: one row per contact at or after `since`: `member_id`, `ts` (epoch seconds),
  `channel`, `offer_id`, `decision_id` (a campaign contact's decision id is its send id).
- `coupons.parquet`: one row per coupon in a wallet, the `Coupon` fields (`redeemed_ts` and
  `redemption_id` null until redeemed).

`history` and `wallet` turn a member's rows back into the `ContactHistory` and `Wallet` the rules take.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from omnirec.domain.vocab import Channel
from omnirec.offers.store import Contact, ContactHistory, Coupon, Wallet

CONTACTS_FILE = "contacts.parquet"
COUPONS_FILE = "coupons.parquet"
CONTACTS_SCHEMA = pa.schema([("member_id", pa.string()), ("ts", pa.float64()), ("channel", pa.string()),
                             ("offer_id", pa.string()), ("decision_id", pa.string())])
COUPONS_SCHEMA = pa.schema([("coupon_id", pa.string()), ("member_id", pa.string()), ("offer_id", pa.string()),
                            ("decision_id", pa.string()), ("issued_ts", pa.float64()), ("expires_ts", pa.float64()),
                            ("value", pa.float64()), ("redeemed_ts", pa.float64()),
                            ("redemption_id", pa.string())])
"""The `Coupon` fields, in order (pinned by a test)."""


def export_ledger(marketing: Callable[[Sequence[str], float, float, bool], list[tuple[ContactHistory, Wallet]]],
                  member_ids: Sequence[str], since: float, now: float, out_dir: Path,
                  wallets: bool = True, chunk: int = 4096) -> None:
    """Write the members' contacts since `since` and (if `wallets`) their coupons to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(out_dir / CONTACTS_FILE, CONTACTS_SCHEMA) as contacts, \
            pq.ParquetWriter(out_dir / COUPONS_FILE, COUPONS_SCHEMA) as coupons:
        for start in range(0, len(member_ids), chunk):
            ids = member_ids[start:start + chunk]
            states = marketing(ids, since, now, wallets)
            contact_rows = [(m, c.ts, c.channel.value, c.offer_id, c.decision_id)
                            for m, (history, _) in zip(ids, states, strict=True) for c in history.contacts]
            coupon_rows = [astuple(c) for _, wallet in states for c in wallet.coupons]
            contacts.write_table(pa.Table.from_pylist([dict(zip(CONTACTS_SCHEMA.names, r, strict=True))
                                                       for r in contact_rows], CONTACTS_SCHEMA))
            coupons.write_table(pa.Table.from_pylist([dict(zip(COUPONS_SCHEMA.names, r, strict=True))
                                                      for r in coupon_rows], COUPONS_SCHEMA))


def _rows(rows: Sequence[dict[str, Any]] | None) -> Sequence[dict[str, Any]]:
    return () if rows is None else rows


def history(rows: Sequence[dict[str, Any]] | None, since: float) -> ContactHistory:
    """A member's exported contact rows (any order) as the history the rules count."""
    contacts = sorted((Contact(float(r["ts"]), Channel(r["channel"]), r["offer_id"], r["decision_id"])
                       for r in _rows(rows) if r["ts"] >= since), key=lambda c: c.ts)
    return ContactHistory(tuple(contacts), since)


def wallet(rows: Sequence[dict[str, Any]] | None, now: float) -> Wallet:
    """A member's exported coupon rows as the wallet the rules read."""
    coupons = sorted((Coupon(**{k: r[k] for k in COUPONS_SCHEMA.names}) for r in _rows(rows)),
                     key=lambda c: c.issued_ts)
    return Wallet(tuple(coupons), now)
