"""Faust agents, one module per actor: thin shells over the pure core in ``mailstream``."""
