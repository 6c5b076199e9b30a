"""Agents tier: the dispatchers driven in-process, on in-memory tables and a fake clock."""
