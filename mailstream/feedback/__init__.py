"""Inbound feedback: provider webhooks verified and normalised, and the replay guard."""
