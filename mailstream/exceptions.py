"""Errors mailstream raises that users can catch."""

from __future__ import annotations


class MailstreamError(Exception):
    """Base class of every error mailstream raises on purpose."""


class ConfigError(MailstreamError):
    """The configuration file or an override is invalid; the message names the key."""


class BrokerError(MailstreamError):
    """The embedded broker could not be found, started or reached."""


class Fenced(MailstreamError):
    """Under exactly_once, a flush wrote to a partition whose transactions are another
    worker's now (it took the partition over, or this worker was given it up): that
    partition's part of the flush did not commit, and it is no longer this worker's to
    write. Nothing needs doing: its new owner goes on from what was committed."""
