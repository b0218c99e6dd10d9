"""The mapping file: which of the retailer's columns is which omnirec field, and how to read it.

A TOML file with one section per input table (`[events]` and `[items]` required; `[members]`, `[stores]`,
`[inventory]`, `[identity_links]`, `[promotions]` optional) plus `[checks]` and `[derive]`. Field values name the
retailer's columns; `[<table>.constants]` gives a value for a field the export does not have
(`channel = "pos"`). The README's "Your own data" section documents every key.
"""

from __future__ import annotations

import tomllib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.vocab import Channel, EventType


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, description="file relative to the source folder: .csv, .csv.gz or .parquet")
    delimiter: str = Field(",", min_length=1, max_length=1)
    constants: dict[str, str] = {}



class TimeFields(BaseModel):
    """How to read a time: one column (`time`) or a date column plus a time-of-day column (`date` + `time`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: str | None = None
    date: str | None = None
    time_format: str = "auto"
    """`auto` (native timestamps as they are, numbers as unix seconds, text as ISO 8601), `s`, `ms`,
    `iso8601`, or a strptime pattern such as `%d/%m/%Y %H:%M` (applied to "date time" when both are set)."""
    timezone: str = "UTC"
    """Zone of times written without one (IANA name, e.g. `Europe/Paris`)."""


class Money(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    price_is: Literal["unit", "line_total"] = "unit"
    """`line_total`: the price column is quantity x unit price (divided by quantity on import)."""
    currency_unit: float = Field(1.0, gt=0)
    """Value of one unit in the file, in the currency omnirec reports (0.01 for prices in cents)."""


class EventsMapping(Section, TimeFields, Money):
    member_id: str | None = None
    anonymous_id: str | None = None
    item_id: str | None = None
    store_id: str | None = None
    channel: str | None = None
    event_type: str | None = None
    quantity: str | None = None
    price: str | None = None
    channel_values: dict[str, str] = {}
    """Retailer code -> omnirec channel, e.g. `{ TILL = "pos", ECOM = "web" }`."""
    event_type_values: dict[str, str] = {}
    """Retailer code -> omnirec event type, e.g. `{ SALE = "purchase", REFUND = "return" }`."""

    @model_validator(mode="after")
    def _check(self) -> EventsMapping:
        if not (self.member_id or self.anonymous_id):
            raise ValueError("map member_id (or anonymous_id) to a column")
        if not self.item_id:
            raise ValueError("map item_id to a column")
        if not (self.time or self.date):
            raise ValueError("map time (or date + time) to a column")
        for name in ("channel", "event_type"):
            if not getattr(self, name) and name not in self.constants:
                raise ValueError(f"map {name} to a column or give it under [events.constants]")
        for name in self.constants:
            if name not in {"channel", "event_type", "store_id"}:
                raise ValueError(f"constants: {name!r} cannot be a constant (channel, event_type, store_id)")
        _vocab(Channel, [*self.channel_values.values(), *([self.constants["channel"]]
                                                           if "channel" in self.constants else [])], "channel")
        _vocab(EventType, [*self.event_type_values.values(), *([self.constants["event_type"]]
                                                               if "event_type" in self.constants else [])],
               "event_type")
        return self


def _vocab(enum: type, values: list[str], field: str) -> None:
    allowed = [m.value for m in enum]
    for v in values:
        if v not in allowed:
            raise ValueError(f"{field}: {v!r} is not one of {', '.join(allowed)}")


class ItemsMapping(Section, Money):
    item_id: str
    category: str | list[str] | None = None
    """One column, or several joined with "/" into a path (department/category/sub-category)."""
    brand: str | None = None
    price: str | None = None
    attributes: list[str] = []
    """Columns written as "column:value" tags (LightFM item features)."""


class MembersMapping(Section, TimeFields):
    member_id: str
    signup: str | None = None
    """Signup time column, read with this section's `time_format` / `timezone`."""
    points: str | None = None
    tier: str | None = None
    home_store: str | None = None
    region: str | None = None
    consent_app: str | None = None
    consent_mini_program: str | None = None
    consent_web: str | None = None
    consent_pos: str | None = None
    consent_store: str | None = None

    @field_validator("time")
    @classmethod
    def _no_time(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("members: use `signup` for the signup time column")
        return v


class StoresMapping(Section):
    store_id: str
    region: str | None = None


class InventoryMapping(Section):
    store_id: str
    item_id: str
    quantity: str


class IdentityMapping(Section):
    anonymous_id: str
    member_id: str


class PromotionsMapping(Section):
    """Planned promotions: an item on display in a store and/or in its mailer, for a week or a time range."""

    item_id: str
    store_id: str
    week: str | None = None
    """Week-number column (1 = the week starting at `week_one`); or `start` + `end`."""
    week_one: str | None = None
    """ISO date or time week 1 starts at (e.g. "2016-12-26T05:00:00Z"; a time without a zone is UTC)."""
    start: str | None = None
    end: str | None = None
    """End column: the first moment the promotion no longer runs (exclusive)."""
    time_format: str = "auto"
    timezone: str = "UTC"
    display: str | None = None
    mailer: str | None = None
    """Display / mailer columns: a value means yes unless it is empty or one of `not_promoted`."""
    not_promoted: list[str] = ["0", "no", "n", "false", "f"]
    """Values (any case) meaning "not on display" / "not in the mailer"."""

    @model_validator(mode="after")
    def _check(self) -> PromotionsMapping:
        if bool(self.week) == bool(self.start or self.end):
            raise ValueError("map either week (with week_one) or start and end")
        if self.week and not self.week_one:
            raise ValueError("week_one: the date week 1 starts is required with week")
        if self.week_one:
            try:
                datetime.fromisoformat(self.week_one)
            except ValueError:
                raise ValueError(f"week_one: {self.week_one!r} is not an ISO date or time") from None
        if not self.week and not (self.start and self.end):
            raise ValueError("map both start and end")
        if not (self.display or self.mailer):
            raise ValueError("map display or mailer (or both) to a column")
        return self


class Checks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    duplicates: Literal["drop", "keep"] = "drop"
    """Exact duplicate rows (equal in every column of the source file): dropped and counted, or kept."""
    unknown_items: Literal["add", "reject"] = "add"
    """Events naming an item the item file lacks: add it as an item of category "unknown", or reject."""
    max_errors: int = Field(20, ge=0)
    """Problems printed line by line; the rest are counted."""
    earliest: str = "1990-01-01"
    """Times before this date are rejected as implausible (a wrong unit or a placeholder date)."""
    future_slack_hours: float = Field(24, ge=0)
    """Times later than as_of plus this are rejected as in the future."""


class Derive(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    points_per_currency: float = Field(1.0, ge=0)
    """Without a points column, points = net spend x this, and the tier follows from points."""


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    events: EventsMapping
    items: ItemsMapping
    members: MembersMapping | None = None
    stores: StoresMapping | None = None
    inventory: InventoryMapping | None = None
    identity_links: IdentityMapping | None = None
    promotions: PromotionsMapping | None = None
    checks: Checks = Checks()
    derive: Derive = Derive()

    @classmethod
    def load(cls, path: Path) -> Mapping:
        """Parse and validate a mapping file; errors name the key, never a traceback."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InvalidArgument("mapping", f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument("mapping", f"{path}: not valid TOML: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidArgument(f"mapping {where}", f"{first['msg']} ({path})") from None
