"""mailstream: an event-driven email automation engine on Kafka and Faust."""

from mailstream.exceptions import BrokerError, ConfigError, MailstreamError
from mailstream.producer import EventProducer

__version__ = "0.1.0"
__all__ = ["BrokerError", "ConfigError", "EventProducer", "MailstreamError", "__version__"]
