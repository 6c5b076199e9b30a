"""Faust table definitions, one module per table."""
