"""The direct readers are the one consumption path: a config asking for Faust's stream
instead fails at start, naming the key."""

from __future__ import annotations

import pytest

from mailstream.config.load import parse_config
from mailstream.exceptions import ConfigError


@pytest.mark.parametrize("section", ["ingest", "delivery"])
def test_direct_read_false_is_refused_naming_the_key(section: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({section: {"direct_read": False}}, "mailstream.yaml", {})
    message = str(caught.value)
    assert message.startswith(f"mailstream.yaml: {section}.direct_read:")
    assert "no longer supported" in message and "delete the key" in message


@pytest.mark.parametrize(
    "raw", [{}, {"ingest": {"direct_read": True}}, {"delivery": {"direct_read": True}}]
)
def test_a_config_written_for_earlier_releases_still_loads(raw: dict[str, object]) -> None:
    config = parse_config(raw, "mailstream.yaml", {})
    assert config.ingest.direct_read and config.delivery.direct_read
