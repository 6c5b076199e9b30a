"""Journeys: the workflow spec, the engine, the send policy, templates and workflow health."""
