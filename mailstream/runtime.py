"""The worker's shared pieces, built once from the config: workflow engine and effects."""

from __future__ import annotations

from mailstream.app import config
from mailstream.apply import EffectsApplier
from mailstream.engine import Engine
from mailstream.templates import DEFAULT_TEMPLATE_DIR, Templates
from tables.timers import timers

engine = Engine(config.compiled_workflows())
templates = Templates(config.templates_dir or DEFAULT_TEMPLATE_DIR)
applier = EffectsApplier(
    templates,
    timers,
    {
        "transactional": config.topics.sends_transactional,
        "marketing": config.topics.sends_marketing,
    },
    config.topics.dlq,
)
