"""Every Redis key the feature store (and the offers engine) uses is built here, and nowhere else.

Layout: ``{ns}:v{schema}:{entity}:{id}`` -> a packed string, a hash of fields plus ``_ts`` (Feast style), or
a sorted set where order matters. Feature keys wrap the id in a Redis Cluster hash tag, ``{entity}:{<id>}``,
so a member's record and lists share one slot (one node per member read, and a script may edit them
together). Two key spaces share the layout:

* materialised features live under a *generation* namespace ``{namespace}@{generation}``; a load writes
  a fresh generation and switches readers by rewriting the pointer hash, so a half-written load is
  never served;
* durable, operational records (identity links, coupon wallets, the contact ledger, dedup claims,
  offer budgets) live under the bare ``{namespace}`` and survive re-materialisation. They are hash-tagged
  too (v2): by the member for a member's offer state (wallet, ledger, redemption stats, per-request issue
  records), by the offer for its budget and reservations, so each offers script touches one slot.

`feature_store/FORMAT.md` documents every entity; `tests/feature_store/test_keys.py` pins them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 5
"""Version of the materialised features' layout: bump when a field's meaning or encoding changes. The
pointer names the version of the generation it serves, and readers refuse another one. v5: the purchased
list carries each item's last purchase time (buy-again and live corrections of the intent lists)."""
DURABLE_VERSION = 2
"""Version of the durable records' layout (wallets, ledgers, links, budgets, the pointer itself). Kept
apart so a feature-layout change neither orphans durable records nor hides the pointer from old readers.
v2: every durable key carries a Redis Cluster hash tag (v1 keys had none; FORMAT.md says how to migrate)."""

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.-]+$")

# Generation-scoped entities (rebuilt by every materialisation).
MEMBER = "member"
RECENT = "recent"
PURCHASED = "purchased"
ANON_RECENT = "anon_recent"
ITEM = "item"
STOCK = "stock"
CATEGORY_ITEMS = "category_items"
BRAND_ITEMS = "brand_items"
MEMBER_TOP = "member_top"

# Durable entities (written live; survive re-materialisation).
IDENTITY = "identity"
WALLET = "wallet"
CONTACTS = "contacts"
SEEN = "seen"
META = "meta"

# --- offer state (written only by offers.store) -----------------------------------------------------
OFFER_BUDGET = "offer_budget"
OFFER_DECISION = "offer_decision"
OFFER_STATS = "offer_stats"
OFFER_SEND = "offer_send"
OFFER_HOLD = "offer_hold"
OFFER_HOLDS = "offer_holds"
OFFER_REQUEST = "offer_request"
OFFER_REDEEMED = "offer_redeemed"


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace; `generation` selects which materialisation the feature keys address."""

    namespace: str
    generation: int = 0
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not _NAMESPACE.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} must match {_NAMESPACE.pattern}")

    def at(self, generation: int) -> Keys:
        """The same namespace addressing another materialisation."""
        return Keys(self.namespace, generation, self.schema)

    @property
    def feature_ns(self) -> str:
        return f"{self.namespace}@{self.generation}"

    def feature(self, entity: str, entity_id: str) -> str:
        """A generation-scoped key, the id its hash tag: `{namespace}@{generation}:v{schema}:{entity}:{<id>}`."""
        return f"{self.feature_ns}:v{self.schema}:{entity}:{{{entity_id}}}"

    def durable(self, entity: str, entity_id: str, detail: str | None = None) -> str:
        """A key that survives re-materialisation: `{namespace}:v{DURABLE_VERSION}:{entity}:{<id>}[:detail]`.

        The id is the hash tag, so keys sharing an id (a member's wallet, ledger and request records) share
        a cluster slot. The extension point for other components (e.g. the offers engine's budget counters):
        pick a new entity name, add a method here and a line to FORMAT.md.
        """
        key = f"{self.namespace}:v{DURABLE_VERSION}:{entity}:{{{entity_id}}}"
        return key if detail is None else f"{key}:{detail}"

    def all_generations_pattern(self) -> str:
        """SCAN pattern matching the feature keys of every generation (used to expire old ones)."""
        return f"{self.namespace}@*"

    # --- generation-scoped features -------------------------------------------------------------
    def member(self, member_id: str) -> str:
        return self.feature(MEMBER, member_id)

    def recent(self, member_id: str) -> str:
        return self.feature(RECENT, member_id)

    def purchased(self, member_id: str) -> str:
        """Packed timed list: (item id, unix seconds of its last purchase) pairs, most recent first."""
        return self.feature(PURCHASED, member_id)

    def member_top(self, member_id: str) -> str:
        """Binary: the member's precomputed lists (`domain.member_lists`), when member state is in the store."""
        return self.feature(MEMBER_TOP, member_id)

    def anon_recent(self, anonymous_id: str) -> str:
        return self.feature(ANON_RECENT, anonymous_id)

    def item(self, item_id: str) -> str:
        return self.feature(ITEM, item_id)

    def stock(self, store_id: str) -> str:
        return self.feature(STOCK, store_id)

    def category_items(self, category: str) -> str:
        """Packed list: the items of one category (exact path), so offers resolve their targets in Redis."""
        return self.feature(CATEGORY_ITEMS, category)

    def brand_items(self, brand: str) -> str:
        return self.feature(BRAND_ITEMS, brand)

    # --- durable records ------------------------------------------------------------------------
    def pointer(self) -> str:
        """Hash naming the generation readers serve, and its schema version."""
        return self.durable(META, "pointer")

    def generation_counter(self) -> str:
        return self.durable(META, "generation")

    def identity(self, anonymous_id: str) -> str:
        return self.durable(IDENTITY, anonymous_id)

    def wallet(self, member_id: str) -> str:
        return self.durable(WALLET, member_id)

    def contacts(self, member_id: str) -> str:
        return self.durable(CONTACTS, member_id)

    def seen(self, tag: str, claim: str) -> str:
        """String: a live event's dedup claim in the group of keys tagged `tag` (a member, store or anonymous
        id), so a slot's script takes it with the writes it guards."""
        return self.durable(SEEN, tag, claim)

    # --- offer state: budgets, idempotent decisions, redemption stats (coupons: wallet) ---
    def offer_budget(self, offer_id: str) -> str:
        """Hash: issued, reserved_cents, redeemed, spent_cents of one offer (never expires)."""
        return self.durable(OFFER_BUDGET, offer_id)

    def offer_decision(self, request_id: str) -> str:
        """String: the JSON DecideCoupon decision stored under its request id (idempotency, TTL)."""
        return self.durable(OFFER_DECISION, request_id)

    def offer_stats(self, member_id: str) -> str:
        """Hash: a member's coupon redemptions and last_redeem_ts (features for the next uplift training)."""
        return self.durable(OFFER_STATS, member_id)

    def offer_send(self, send_id: str) -> str:
        """String: digest of a confirmed campaign send (offer, channel, members), so a retry records nothing twice."""
        return self.durable(OFFER_SEND, send_id)

    def offer_hold(self, offer_id: str, request_id: str) -> str:
        """Hash: one DecideCoupon request's reservation of an offer's budget (Redis Cluster), in the offer's slot."""
        return self.durable(OFFER_HOLD, offer_id, request_id)

    def offer_holds(self, offer_id: str) -> str:
        """Sorted set: request ids of an offer's pending reservations, score = when the reaper may release them."""
        return self.durable(OFFER_HOLDS, offer_id)

    def offer_request(self, member_id: str, request_id: str) -> str:
        """Hash: what a DecideCoupon request did in the member's slot (Redis Cluster): the decision, the
        reservation that issued it, reservations voided."""
        return self.durable(OFFER_REQUEST, member_id, request_id)

    def offer_redeemed(self, offer_id: str, coupon_id: str) -> str:
        """String: a coupon's redemption was booked to its offer's budget (Redis Cluster), so a retry books it once."""
        return self.durable(OFFER_REDEEMED, offer_id, coupon_id)


def key_column(key: Callable[[str], str], ids: pa.Array) -> pa.Array:
    """`key(id)` for a whole column of ids with one Arrow kernel (bulk loads build millions of keys).

    The key is split around a control character, which ids never contain (`domain.schema`)."""
    prefix, suffix = key("\x00").split("\x00")
    return pc.binary_join_element_wise(prefix, ids, suffix, "")


def event_digest(*fields: object) -> str:
    """Stable id of an event from its fields, for event-time dedup (never Python's salted `hash`)."""
    raw = "\x1f".join("" if f is None else str(f) for f in fields)
    return hashlib.blake2b(raw.encode(), digest_size=12).hexdigest()
