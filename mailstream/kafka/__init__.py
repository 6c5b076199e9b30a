"""Kafka I/O: connections (access), the direct reader and its intake, the partitioner, topics, dead letters, the broker's health, local clusters."""
