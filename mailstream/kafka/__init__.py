"""Kafka I/O: the direct reader, backfills, the partitioner, dead letters, the broker's health."""
