"""The offer catalogue: a declarative TOML or JSON file, validated as a whole, hot-reloadable.

Marketing edits the file, not code. A file that does not validate is rejected with every error listed
(one line per problem, across all offers), and the catalogue already in force keeps serving: a typo
must never switch offers off or on by accident.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import tomllib
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from omnirec.domain.errors import InvalidArgument
from omnirec.domain.tiers import TierLadder
from omnirec.domain.vocab import Channel, LifecycleStage

log = logging.getLogger(__name__)


class OfferKind(StrEnum):
    AMOUNT_OFF = "amount_off"
    """`amount` off an order of at least `min_spend`, e.g. 30 off 100."""
    PERCENT_OFF = "percent_off"
    """`amount` percent off, the discount capped at `max_cost`."""
    GIFT = "gift"
    """A gift worth `amount` (its cost to the retailer) with an order of at least `min_spend`."""
    POINTS_MULTIPLIER = "points_multiplier"
    """Points times `amount` on the next order; what the extra points cost is capped at `max_cost`."""
    STORE_EVENT = "store_event"
    """An invitation to a store event; `amount` is the cost per attendee."""

    @property
    def is_coupon(self) -> bool:
        """Coupons are issued into the wallet at checkout; event invitations are only shown."""
        return self is not OfferKind.STORE_EVENT


class Target(BaseModel):
    """What the offer promotes; `basket` means the whole order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scope: Literal["items", "categories", "brands", "basket"]
    ids: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _ids_match_scope(self) -> Target:
        if self.scope == "basket" and self.ids:
            raise ValueError("a basket target takes no ids")
        if self.scope != "basket" and not self.ids:
            raise ValueError(f"a {self.scope} target needs at least one id")
        return self

    @cached_property
    def key(self) -> str:
        """Arbitration shows at most one offer per target."""
        return f"{self.scope}:{','.join(sorted(self.ids))}"


class Eligibility(BaseModel):
    """Who may receive the offer: a minimum tier or an explicit set of tiers, and lifecycle stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_tier: str | None = None
    tiers: tuple[str, ...] = ()
    """Explicit tiers; empty means any tier (subject to `min_tier`)."""
    stages: tuple[LifecycleStage, ...] = ()
    """Lifecycle stages; empty means every stage."""

    @field_validator("min_tier")
    @classmethod
    def _known_min_tier(cls, value: str | None, info: ValidationInfo) -> str | None:
        ladder = _ladder(info)
        if value is not None and value not in ladder.names:
            raise ValueError(f"unknown tier {value!r}; ladder is {', '.join(ladder.names)}")
        return value

    @field_validator("tiers")
    @classmethod
    def _known_tiers(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        ladder = _ladder(info)
        unknown = [t for t in value if t not in ladder.names]
        if unknown:
            raise ValueError(f"unknown tier(s) {unknown}; ladder is {', '.join(ladder.names)}")
        return value

    @cached_property
    def tier_rule(self) -> str:
        """The tier condition as decisions explain it (computed once per catalogue load, not per decision)."""
        if self.min_tier is not None:
            return f"tier>={self.min_tier}"
        if self.tiers:
            return f"tier in {'|'.join(self.tiers)}"
        return "tier=any"

    @model_validator(mode="after")
    def _one_tier_rule(self) -> Eligibility:
        if self.min_tier is not None and self.tiers:
            raise ValueError("give either min_tier or tiers, not both")
        return self


def _ladder(info: ValidationInfo) -> TierLadder:
    context = info.context or {}
    ladder = context.get("tiers", TierLadder())
    if not isinstance(ladder, TierLadder):
        raise TypeError(f"validation context 'tiers' must be a TierLadder, not {type(ladder).__name__}")
    return ladder


class Cap(BaseModel):
    """At most `count` contacts per member within any `period_days` window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(ge=1)
    period_days: float = Field(gt=0)


class Budget(BaseModel):
    """Total coupons and money (the coupons' maximum cost, reserved when issued) the offer may commit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_count: int | None = Field(None, ge=0)
    max_money: float | None = Field(None, ge=0)


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str = ""
    kind: OfferKind
    amount: float = Field(gt=0, description="meaning depends on kind; see OfferKind")
    min_spend: float = Field(0.0, ge=0)
    max_cost: float | None = Field(None, gt=0, description="cap on one redemption's cost (percent_off, points)")
    target: Target
    eligibility: Eligibility = Eligibility()
    channels: tuple[Channel, ...] = Field(min_length=1)
    valid_from: datetime
    valid_until: datetime
    per_member_cap: Cap | None = None
    budget: Budget = Budget()
    value: float = Field(ge=0, description="business value (margin) of one conversion the offer causes")
    issue_cost: float = Field(0.0, ge=0, description="cost of issuing or showing it once (message, print)")
    base_response: float = Field(0.1, gt=0, le=1, description="response rate of an average eligible member")
    holdout_share: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _kind_rules(self) -> Offer:
        if self.kind is OfferKind.PERCENT_OFF and self.amount > 100:
            raise ValueError("percent_off amount is a percentage, at most 100")
        if self.kind in (OfferKind.PERCENT_OFF, OfferKind.POINTS_MULTIPLIER) and self.max_cost is None:
            raise ValueError(f"{self.kind.value} needs max_cost, so its budget can be reserved")
        if self.kind is OfferKind.POINTS_MULTIPLIER and self.amount <= 1:
            raise ValueError("points_multiplier amount must be > 1")
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self

    @property
    def redemption_cost(self) -> float:
        """Most one redemption can cost: what the money budget reserves per issued coupon."""
        if self.kind in (OfferKind.PERCENT_OFF, OfferKind.POINTS_MULTIPLIER):
            if self.max_cost is None:
                raise InvalidArgument(f"offers ({self.id}).max_cost", f"required for {self.kind.value}")
            return self.max_cost
        return self.amount

    def discount(self, order_value: float) -> float:
        """Actual cost of a redemption on an order, booked against the budget when redeemed."""
        if self.kind is OfferKind.PERCENT_OFF:
            return min(order_value * self.amount / 100.0, self.redemption_cost)
        return self.redemption_cost

    def valid_at(self, ts: float) -> bool:
        return self.valid_span[0] <= ts < self.valid_span[1]

    @cached_property
    def valid_span(self) -> tuple[float, float]:
        """(valid_from, valid_until) as unix seconds, converted once per catalogue load."""
        return self.valid_from.timestamp(), self.valid_until.timestamp()


class Catalogue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    """Digest of the file's bytes: logged with every decision so it can be replayed against its catalogue."""
    offers: tuple[Offer, ...]

    def get(self, offer_id: str) -> Offer | None:
        return next((o for o in self.offers if o.id == offer_id), None)


class CatalogueError(InvalidArgument):
    """The file does not validate; `errors` lists every problem found, one string each."""

    def __init__(self, path: Path, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("catalogue", f"{path}: {len(errors)} error(s):\n" + "\n".join(f"  {e}" for e in errors))


def parse_catalogue(raw: bytes, path: Path, tiers: TierLadder) -> Catalogue:
    """Validate every offer separately, so one broken offer does not hide the errors of the others."""
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogueError(path, [f"cannot parse: {exc}"]) from None
    errors = [f"{k}: unknown top-level key; expected 'offers'" for k in data if k != "offers"]
    raw_offers = data.get("offers")
    if not isinstance(raw_offers, list) or not raw_offers:
        raise CatalogueError(path, [*errors, "offers: expected a non-empty list of offers"])
    offers: list[Offer] = []
    for i, entry in enumerate(raw_offers):
        label = f"offers[{i}]" + (f" ({entry['id']})" if isinstance(entry, dict) and "id" in entry else "")
        try:
            offers.append(Offer.model_validate(entry, context={"tiers": tiers}))
        except ValidationError as exc:
            for e in exc.errors():
                where = ".".join(str(p) for p in e["loc"])
                errors.append(f"{label}{'.' + where if where else ''}: {e['msg']}")
    ids = [e["id"] for e in raw_offers if isinstance(e, dict) and isinstance(e.get("id"), str)]
    errors += [f"offers ({i}): duplicate offer id" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if errors:
        raise CatalogueError(path, errors)
    return Catalogue(version=hashlib.sha256(raw).hexdigest()[:12], offers=tuple(offers))


def load_catalogue(path: Path, tiers: TierLadder | None = None) -> Catalogue:
    path = Path(path)
    return parse_catalogue(path.read_bytes(), path, tiers or TierLadder())


_TARGET_COLUMNS = {"items": ("item_id", "item"), "categories": ("category", "category"), "brands": ("brand", "brand")}


def check_catalogue(path: Path, tiers: TierLadder, items: pa.Table | None) -> Catalogue:
    """`load_catalogue`, plus every target id that names no item, category or brand of `items` (the
    imported item table), all in one `CatalogueError`."""
    path = Path(path)
    raw = path.read_bytes()
    errors: list[str] = []
    catalogue = None
    try:
        catalogue = parse_catalogue(raw, path, tiers)
    except CatalogueError as exc:
        errors = exc.errors
    if items is not None:
        try:
            data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
        except (ValueError, UnicodeDecodeError):
            data = {}
        entries = data.get("offers") if isinstance(data.get("offers"), list) else []
        errors += unknown_targets(entries, items)
    if errors or catalogue is None:
        raise CatalogueError(path, errors)
    return catalogue


def unknown_targets(entries: list[object], items: pa.Table) -> list[str]:
    """One error per target id that no item, category or brand in `items` carries."""
    known = {scope: set(items[column].to_pylist()) for scope, (column, _) in _TARGET_COLUMNS.items()}
    errors = []
    for i, entry in enumerate(entries):
        target = entry.get("target") if isinstance(entry, dict) else None
        if not isinstance(target, dict) or target.get("scope") not in known:
            continue
        label = f"offers[{i}]" + (f" ({entry['id']})" if "id" in entry else "")
        missing = [t for t in target.get("ids") or [] if t not in known[target["scope"]]]
        noun = _TARGET_COLUMNS[target["scope"]][1]
        errors += [f"{label}.target.ids: {t!r} is not a known {noun} in the imported items" for t in missing]
    return errors


class CatalogueSource:
    """The catalogue in force, reloaded when the file's mtime changes (checked at most every `poll_seconds`).

    A reload that fails keeps the previous catalogue and records the error in `last_error`; the first
    load must succeed, because there is nothing to fall back on.
    """

    def __init__(self, path: Path, tiers: TierLadder | None = None, poll_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.tiers = tiers or TierLadder()
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._mtime = self.path.stat().st_mtime_ns
        self._catalogue = load_catalogue(self.path, self.tiers)
        self._checked = clock()
        self.last_error: CatalogueError | None = None

    def current(self) -> Catalogue:
        if self._clock() - self._checked >= self.poll_seconds:
            self.refresh()
        return self._catalogue

    def refresh(self) -> bool:
        """Reload if the file changed; True when a new catalogue is now in force."""
        self._checked = self._clock()
        mtime = self.path.stat().st_mtime_ns
        if mtime == self._mtime:
            return False
        self._mtime = mtime
        try:
            catalogue = load_catalogue(self.path, self.tiers)
        except CatalogueError as exc:
            self.last_error = exc
            log.error("catalogue reload rejected; version %s stays in force: %s", self._catalogue.version, exc)
            return False
        self.last_error = None
        self._catalogue = catalogue
        log.info("catalogue %s loaded from %s (%d offers)", catalogue.version, self.path, len(catalogue.offers))
        return True
