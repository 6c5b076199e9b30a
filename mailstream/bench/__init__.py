"""``mailstream bench``: measurements that start everything they need and print figures."""
