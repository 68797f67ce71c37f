"""Server commands of `calib`, one module per command (mounted by clients/cli/app.py)."""
