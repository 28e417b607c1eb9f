"""The benchmark lab (`dynadapter bench`): it measures and reports, and nothing but the command line
imports it. Its subcommands are in `commands.py`."""
