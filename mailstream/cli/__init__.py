"""The ``mailstream`` command line and its subcommands."""
