"""The `calib` command: `clients.cli.app` assembles it (the `[project.scripts]` entry point).

Commands live in two packages, one module per command, named after it:

* `clients/cli/` — client commands, which talk HTTP to a gateway: `demo`, `report`;
* `service/cli/` — server commands, which run the service or work on its store: `serve`,
  `engine`, `keys`, `dataset`, `refit` and `profile` (`refit.py`), `optimize-prompt`.

`pip install mllm-calib` (no `server` extra) gives `calib --version`; every other command then
says to install the server extra (`clients/cli/server_extra.py`).
"""

from clients.cli.app import app

__all__ = ["app"]
