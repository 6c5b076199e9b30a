"""The pure core: events, user state, dedup, windows, conditions, tenants; no I/O, no clock."""
