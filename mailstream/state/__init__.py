"""State: RocksDB partitions written directly, the staged flush, timer keys, cached user states."""
