"""The names omnirec uses everywhere: id aliases, channels, event types, stages and column names."""

from enum import StrEnum
from typing import TypeAlias

MemberId: TypeAlias = str
ItemId: TypeAlias = str
StoreId: TypeAlias = str
AnonymousId: TypeAlias = str
InternalIdx: TypeAlias = int

ONLINE_STORE: StoreId = "online"
"""Pseudo store id under which online (app, mini-program, web) stock is kept."""


class Channel(StrEnum):
    APP = "app"
    MINI_PROGRAM = "mini_program"
    WEB = "web"
    POS = "pos"
    STORE = "store"

    @property
    def is_physical(self) -> bool:
        """POS and store visits happen in a store, so they carry a store id and use store stock."""
        return self in (Channel.POS, Channel.STORE)


class EventType(StrEnum):
    VIEW = "view"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RETURN = "return"
    COUPON_REDEEM = "coupon_redeem"
    STORE_VISIT = "store_visit"
    WISHLIST = "wishlist"

    @property
    def needs_item(self) -> bool:
        return self is not EventType.STORE_VISIT


class LifecycleStage(StrEnum):
    NEW = "new"
    ACTIVE = "active"
    AT_RISK = "at_risk"
    DORMANT = "dormant"
    CHURNED = "churned"
    REACTIVATED = "reactivated"


class Intent(StrEnum):
    """What a member's list is for: grocery's next basket is mostly repeats, so repeat and discovery are
    separate answers (Li et al. 2023) and MIXED blends them."""

    MIXED = "mixed"
    BUY_AGAIN = "buy_again"
    """Items the member bought before, ordered by how due each is."""
    DISCOVER = "discover"
    """Items the member never bought."""


class Col:
    """Column names of the event log and entity tables (Parquet files and Arrow tables)."""

    MEMBER_ID = "member_id"
    ANONYMOUS_ID = "anonymous_id"
    ITEM_ID = "item_id"
    STORE_ID = "store_id"
    CHANNEL = "channel"
    EVENT_TYPE = "event_type"
    QUANTITY = "quantity"
    PRICE = "price"
    TS = "ts"
    WEIGHT = "weight"
