"""The online feature store on Redis: key layout (FORMAT.md), materialisation, request reader, live updates,
coupon wallet and contact ledger."""
