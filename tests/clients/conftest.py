"""The report tests reuse the refit tests' gateway (scheduler off, fresh SQLite)."""

from tests.refit.conftest import api, refit_gateway

__all__ = ["api", "refit_gateway"]
