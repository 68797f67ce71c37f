"""Server-side command groups mounted by the `calib` CLI (see clients/cli.py)."""
