"""`python -m clients.cli ...`: the `calib` command without the console script."""

from clients.cli.app import app

app()
