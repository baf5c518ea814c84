"""The ``pangu-draw`` command line: one module per subcommand."""
