"""Errors mailstream raises that users can catch."""

from __future__ import annotations


class MailstreamError(Exception):
    """Base class of every error mailstream raises on purpose."""


class ConfigError(MailstreamError):
    """The configuration file or an override is invalid; the message names the key."""


class BrokerError(MailstreamError):
    """The embedded broker could not be found, started or reached."""
