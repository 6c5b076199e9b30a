"""The worker's runtime: what it builds from the config, its preflight checks and signals."""
