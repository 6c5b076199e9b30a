"""Kafka I/O: connections, the direct readers, topics, the partitioner, dead letters,
the broker's health, the embedded broker and local Apache Kafka clusters."""
