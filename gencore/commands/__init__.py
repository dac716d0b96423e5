"""Subcommands of the `gencore` command line (see gencore/cli.py)."""
