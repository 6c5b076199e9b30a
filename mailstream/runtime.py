"""The worker's shared pieces, built once from the config: workflows, policy, effects."""

from __future__ import annotations

from mailstream.app import config
from mailstream.apply import EffectsApplier
from mailstream.automation import Automation
from mailstream.engine import Engine
from mailstream.policy import Policy
from mailstream.suppression_list import GlobalSuppressionList
from mailstream.templates import DEFAULT_TEMPLATE_DIR, Templates
from tables.timers import timers

suppression_list = GlobalSuppressionList(
    config.bootstrap_servers, config.topics.suppression, config.data_dir / "suppression-list"
)
automation = Automation(
    Engine(config.compiled_workflows()),
    Policy(config.policy.settings(), listed=suppression_list.get),
)
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
