"""Delivery: a send's state machine, pacing, fair shares, the message, the dispatch loop."""
