"""The calibration source behind the health gauges (`/metrics`, docs/metrics.md).

`make_calibration_source(store)` returns the callable `CalibrationCollector` asks at scrape time
(in the route's worker thread; synchronous store reads are fine there). Per (model, task) with an
active profile it reports:

* the active profile and the metrics stored with its version (held-out ECE, Brier, NLL, ...);
* the mean raw and calibrated confidence of the newest `recent` predictions *served by that
  version* (the label-free estimated accuracy; none right after an activation);
* PSI of those calibrated confidences against the fit window's confidence quantiles
  (`metrics["reference_confidences"]`, written by `calibrators.refit.refit_profile`; 101
  quantiles are an equal-mass sample of the fit window, which is what PSI's quantile bins use),
  once at least `min_psi_sample` recent predictions exist;
* when the last refit that fitted a challenger (activated or rejected) finished — from the audit
  log, so refits by another replica or by `calib refit` count.

The refit counters, the refit-duration histogram and the last-failure time come from the
store's refit tallies (`Store.refit_tallies`, the `refit_source` of the collector), for the same
reason: on Kubernetes the refits run in a CronJob, a process nobody scrapes.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import fmean

from calibrators import population_stability_index
from service.metrics import CalibrationState
from service.refit.job import FITTED_STATUSES
from service.store import Store

__all__ = ["make_calibration_source"]


def make_calibration_source(
    store: Store, *, recent: int = 2000, min_psi_sample: int = 100
) -> Callable[[], list[CalibrationState]]:
    def calibration_source() -> list[CalibrationState]:
        states = []
        for model, task in store.profile_models():
            active = store.active_version(model, task)
            if active is None:
                continue
            profile = active.profile
            raw, calibrated = store.recent_confidences(
                model, task, limit=recent, profile_version=active.version, mode=profile.mode
            )
            metrics = active.metrics or {}
            reference = metrics.get("reference_confidences") if isinstance(metrics, dict) else None
            psi = None
            if reference and len(calibrated) >= min_psi_sample:
                psi = population_stability_index(reference, calibrated)
            last = store.last_refit(model, task, statuses=FITTED_STATUSES)
            states.append(
                CalibrationState(
                    model,
                    task,
                    profile=profile,
                    metrics=active.metrics,
                    recent_mean_raw_confidence=fmean(raw) if raw else None,
                    recent_mean_calibrated_confidence=fmean(calibrated) if calibrated else None,
                    confidence_psi=psi,
                    last_refit_success_at=last.finished_at if last is not None else None,
                )
            )
        return states

    return calibration_source
