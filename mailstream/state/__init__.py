"""State: the Store protocol (RocksDB and in-memory), the staged flush, timer keys, user cache."""
