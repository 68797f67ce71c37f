"""The refit: labeled predictions → a new calibration profile version (docs/refit.md).

* `dataset` — labeled rows → `calibrators.refit.LabeledSet` (modes, padding, mixed labels);
* `job` — one attempt under the lease: window, fit, champion/challenger, save, audit log;
* `runner` — runs attempts for the app off the event loop (worker process), reports metrics;
* `scheduler` — the in-process triggers (interval, N new labels).
"""

from service.refit.dataset import DatasetInfo, build_labeled_set
from service.refit.job import (
    BUSY_REASON,
    RefitConfig,
    RefitOutcome,
    lease_name,
    run_refit,
    served_profile,
)
from service.refit.runner import RefitRunner, outcome_from_event
from service.refit.scheduler import RefitScheduler

__all__ = [
    "BUSY_REASON",
    "DatasetInfo",
    "RefitConfig",
    "RefitOutcome",
    "RefitRunner",
    "RefitScheduler",
    "build_labeled_set",
    "lease_name",
    "outcome_from_event",
    "run_refit",
    "served_profile",
]
