"""The config: the ``mailstream.yaml`` schema, its sections and how it is loaded."""
