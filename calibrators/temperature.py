"""Temperature scaling restricted to the option set (docs/architecture.md, "Confidence math").

Because log-softmax differences are logit differences, ``softmax(option_logprobs / T)`` is exactly
the temperature-scaled model restricted to the options, so one scalar ``T`` fitted on labeled
items recalibrates every option probability.

The fit minimizes the mean negative log-likelihood over the inverse temperature ``beta = 1 / T``.
With option labels the objective is convex in ``beta`` (its second derivative is the variance of
the option logprobs under the scaled softmax), so safeguarded Newton steps with the analytic
gradient and Hessian converge in a handful of vectorized passes: 1M items x 4 options fit in
a fraction of a second. Items known only as "the chosen option was right/wrong" add the binary
NLL of ``p_chosen(T)``; a right answer is exactly an option label, a wrong one makes the objective
non-convex, so the Newton start is the best point of a coarse log-spaced scan.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import expit, log_softmax

__all__ = ["TemperatureScaler", "grid_search_temperature"]

_SCAN_ROWS = 20_000  # rows per group used by the coarse starting-point scan
_SCAN_POINTS = 17


def _as_logprob_matrix(option_logprobs: Any) -> np.ndarray:
    matrix = np.asarray(option_logprobs, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"option_logprobs must be 2-D (n, k), got shape {matrix.shape}")
    if np.isnan(matrix).any() or np.isposinf(matrix).any():
        raise ValueError("option_logprobs must be finite or -inf (padding)")
    return matrix


def _targets(
    matrix: np.ndarray, labels: Any, chosen: Any, correct: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split items into (rows, true option) and (rows, wrongly chosen option)."""
    n = matrix.shape[0]
    labels_arr = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels)
    labels_arr = labels_arr.astype(np.int64).reshape(-1)
    if labels_arr.shape[0] != n:
        raise ValueError("labels must have one entry per row of option_logprobs")
    binary = labels_arr < 0
    if binary.any():
        if chosen is None or correct is None:
            raise ValueError("rows with label -1 need chosen= and correct=")
        chosen_arr = np.asarray(chosen).astype(np.int64).reshape(-1)
        correct_arr = np.asarray(correct).astype(float).reshape(-1)
        if chosen_arr.shape[0] != n or correct_arr.shape[0] != n:
            raise ValueError("chosen and correct must have one entry per row")
        if not np.isin(correct_arr[binary], (0.0, 1.0)).all():
            raise ValueError("correct must be 0 or 1")
        right = binary & (correct_arr == 1.0)
        wrong = binary & (correct_arr == 0.0)
        target = np.where(right, chosen_arr, labels_arr)
    else:
        right = np.zeros(n, dtype=bool)
        wrong = right
        target = labels_arr
        chosen_arr = labels_arr
    labeled = ~binary | right
    rows_l, rows_w = np.flatnonzero(labeled), np.flatnonzero(wrong)
    k = matrix.shape[1]
    for rows, idx in ((rows_l, target[labeled]), (rows_w, chosen_arr[wrong])):
        if ((idx < 0) | (idx >= k)).any() or np.isneginf(matrix[rows, idx]).any():
            raise ValueError("every label / chosen index must point at a real (finite) option")
    return rows_l, target[labeled], rows_w, chosen_arr[wrong]


_CONFIDENCE_BLOCK = 65_536  # rows per block of `TemperatureScaler.confidence`


class _Objective:
    """Sum of per-item NLLs as a function of beta = 1/T, with first and second derivatives.

    Arrays are stored option-major ``(k, n)`` so each pass is over contiguous memory, and shifted
    so every exponent is <= 0 (no overflow at any beta).
    """

    def __init__(
        self,
        matrix: np.ndarray,
        rows_l: np.ndarray,
        target: np.ndarray,
        rows_w: np.ndarray,
        excluded: np.ndarray,
    ) -> None:
        columns = np.ascontiguousarray(matrix.T)  # option-major: row-wise reductions are slow
        n_finite = np.zeros(columns.shape[1], dtype=np.int64)
        for column in columns:
            n_finite += np.isfinite(column)
        informative = n_finite >= 2  # one-option rows carry no information about T
        keep_l, keep_w = informative[rows_l], informative[rows_w]
        rows_l, target = rows_l[keep_l], target[keep_l]
        rows_w, excluded = rows_w[keep_w], excluded[keep_w]
        self.n = int(rows_l.size + rows_w.size)

        sub = columns if rows_l.size == columns.shape[1] else columns.take(rows_l, axis=1)
        self.d_l = self._shift(sub)
        self.dy_l = self.d_l[target, np.arange(rows_l.size)]

        sub = columns.take(rows_w, axis=1)
        own = sub[excluded, np.arange(rows_w.size)]
        sub[excluded, np.arange(rows_w.size)] = -np.inf
        self.d_w = self._shift(sub, own)
        self.dc_w = own

    @staticmethod
    def _shift(columns: np.ndarray, also: np.ndarray | None = None) -> np.ndarray:
        """Subtract each item's max (in place on ``also``)."""
        top = np.full(columns.shape[1], -np.inf)
        for column in columns:
            np.maximum(top, column, out=top)
        shifted = columns - top
        if also is not None:
            also -= top
        return np.asarray(shifted)

    def subsample(self, max_rows: int) -> _Objective:
        """A strided subset of the rows (deterministic), for the cheap starting-point scan."""
        out = object.__new__(_Objective)
        step_l = max(1, math.ceil(self.dy_l.size / max_rows))
        step_w = max(1, math.ceil(self.dc_w.size / max_rows))
        out.d_l, out.dy_l = self.d_l[:, ::step_l], self.dy_l[::step_l]
        out.d_w, out.dc_w = self.d_w[:, ::step_w], self.dc_w[::step_w]
        out.n = int(out.dy_l.size + out.dc_w.size)
        return out

    @staticmethod
    def _moments(d: np.ndarray, beta: float) -> tuple[np.ndarray, ...]:
        """Per item: sum of exp(beta*d), mean and variance of d under the scaled softmax.

        A padding option (-inf) weighs exp(-inf) = 0; its d is taken as 0 in the moments (0 *
        -inf would be NaN), one option row at a time rather than as a second (k, n) copy: at a
        million labels that copy was ~40 MB of the refit's peak memory.
        """
        total = np.zeros(d.shape[1])
        first = np.zeros(d.shape[1])
        second = np.zeros(d.shape[1])
        e = np.empty(d.shape[1])
        dz = np.empty(d.shape[1])
        for j in range(d.shape[0]):
            np.multiply(d[j], beta, out=e)
            np.exp(e, out=e)
            total += e
            np.copyto(dz, d[j])
            dz[np.isneginf(dz)] = 0.0
            e *= dz
            first += e
            e *= dz
            second += e
        first /= total
        second /= total
        second -= first * first
        return total, first, second

    def __call__(self, beta: float) -> tuple[float, float, float]:
        f = g = h = 0.0
        if self.dy_l.size:
            total, mean, var = self._moments(self.d_l, beta)
            f += float(np.log(total).sum() - beta * self.dy_l.sum())
            g += float(mean.sum() - self.dy_l.sum())
            h += float(var.sum())
        if self.dc_w.size:
            # -log(1 - p_c) = softplus(x) with x = beta*d_c - lse_{j != c}(beta*d_j).
            total, mean, var = self._moments(self.d_w, beta)
            x = beta * self.dc_w - np.log(total)
            p = expit(x)
            gap = self.dc_w - mean
            f += float(np.logaddexp(0.0, x).sum())
            g += float((p * gap).sum())
            h += float((p * (1.0 - p) * gap * gap - p * var).sum())
        return f, g, h


def _minimize(objective: _Objective, beta_lo: float, beta_hi: float) -> tuple[float, float]:
    """Safeguarded Newton on beta in [beta_lo, beta_hi]; returns (beta, summed NLL)."""
    scan = objective.subsample(_SCAN_ROWS) if objective.n > 2 * _SCAN_ROWS else objective
    grid = np.unique(np.append(np.geomspace(beta_lo, beta_hi, _SCAN_POINTS), 1.0))
    grid = grid[(grid >= beta_lo) & (grid <= beta_hi)]
    beta = float(grid[int(np.argmin([scan(float(b))[0] for b in grid]))])

    f, g, h = objective(beta)
    for _ in range(100):
        step = -g / h if h > 0 else -math.copysign(beta, g)
        new = min(max(beta + step, beta_lo, beta / 4), beta_hi, beta * 4)
        if new == beta:
            break  # at a bound with the gradient pointing outward
        for _ in range(30):
            f_new, g_new, h_new = objective(new)
            slack = 1e-12 * abs(f) + 1e-4 * g * (new - beta)
            if f_new <= f + slack:
                break
            new = beta + (new - beta) / 2
        else:
            break
        done = abs(new - beta) <= 1e-9 * beta
        beta, f, g, h = new, f_new, g_new, h_new
        if done:
            break
    return beta, f


class TemperatureScaler:
    """One temperature for all options: ``p_k(T) = softmax(option_logprobs / T)_k``.

    ``fit`` takes option logprobs ``(n, k)`` (ragged option counts padded with ``-inf``) and
    either ``labels[i]`` (the true option) or, where the label is ``-1``, top-label correctness
    ``correct[i]`` of the ``chosen[i]`` option. Learned: ``temperature_``, ``n_samples_`` (rows
    given), ``nll_`` (mean NLL at ``temperature_`` over the rows that carry information, i.e.
    have at least two real options).
    """

    def __init__(self, min_temperature: float = 0.05, max_temperature: float = 20.0) -> None:
        self.min_temperature = min_temperature
        self.max_temperature = max_temperature

    def fit(
        self,
        option_logprobs: Any,
        labels: Any = None,
        *,
        chosen: Any = None,
        correct: Any = None,
    ) -> TemperatureScaler:
        """Minimize the mean NLL over T in [min_temperature, max_temperature]."""
        if not 0 < self.min_temperature <= self.max_temperature:
            raise ValueError("need 0 < min_temperature <= max_temperature")
        matrix = _as_logprob_matrix(option_logprobs)
        if matrix.shape[0] == 0:
            raise ValueError("cannot fit a temperature on zero items")
        objective = _Objective(matrix, *_targets(matrix, labels, chosen, correct))
        self.n_samples_ = int(matrix.shape[0])
        if objective.n == 0:
            self.temperature_ = 1.0
            self.nll_ = 0.0
            return self
        beta, total = _minimize(objective, 1.0 / self.max_temperature, 1.0 / self.min_temperature)
        self.temperature_ = float(1.0 / beta)
        self.nll_ = float(total / objective.n)
        return self

    def _check_fitted(self) -> float:
        temperature = getattr(self, "temperature_", None)
        if temperature is None:
            raise RuntimeError("TemperatureScaler is not fitted yet")
        return float(temperature)

    def predict_proba(self, option_logprobs: Any) -> np.ndarray:
        """Calibrated option probabilities ``(n, k)``; padding columns get 0."""
        temperature = self._check_fitted()
        matrix = _as_logprob_matrix(option_logprobs) / temperature
        matrix = matrix - matrix.max(axis=1, keepdims=True)
        exps = np.exp(matrix)
        return np.asarray(exps / exps.sum(axis=1, keepdims=True))

    def confidence(self, option_logprobs: Any, chosen: Any) -> np.ndarray:
        """Calibrated probability of the chosen option per row ``(n,)``.

        The same arithmetic as :meth:`predict_proba`, in blocks of rows: a refit asks for the
        confidence of every labeled item (its drift reference), and the full ``(n, k)``
        probability matrix plus its temporaries cost ~100 MB at a million labels.
        """
        temperature = self._check_fitted()
        matrix = _as_logprob_matrix(option_logprobs)
        idx = np.asarray(chosen, dtype=np.int64).reshape(-1)
        out = np.empty(matrix.shape[0])
        for start in range(0, matrix.shape[0], _CONFIDENCE_BLOCK):
            block = matrix[start : start + _CONFIDENCE_BLOCK] / temperature
            block -= block.max(axis=1, keepdims=True)
            np.exp(block, out=block)
            stop = start + block.shape[0]
            picked = block[np.arange(block.shape[0]), idx[start:stop]]
            out[start:stop] = picked / block.sum(axis=1)
        return out

    def nll(
        self,
        option_logprobs: Any,
        labels: Any = None,
        *,
        chosen: Any = None,
        correct: Any = None,
    ) -> float:
        """Mean NLL of these items at the fitted T (same objective as ``fit``; for challengers)."""
        temperature = self._check_fitted()
        matrix = _as_logprob_matrix(option_logprobs)
        objective = _Objective(matrix, *_targets(matrix, labels, chosen, correct))
        if objective.n == 0:
            return float("nan")
        return objective(1.0 / temperature)[0] / objective.n

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable state."""
        return {
            "type": "temperature",
            "temperature": self._check_fitted(),
            "min_temperature": float(self.min_temperature),
            "max_temperature": float(self.max_temperature),
            "n_samples": int(getattr(self, "n_samples_", 0)),
            "nll": nll if math.isfinite(nll := float(getattr(self, "nll_", math.nan))) else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureScaler:
        """Rebuild a fitted scaler from :meth:`to_dict` output."""
        scaler = cls(
            min_temperature=float(data.get("min_temperature", 0.05)),
            max_temperature=float(data.get("max_temperature", 20.0)),
        )
        scaler.temperature_ = float(data["temperature"])
        scaler.n_samples_ = int(data.get("n_samples", 0))
        nll = data.get("nll")
        scaler.nll_ = math.nan if nll is None else float(nll)
        return scaler

    def __repr__(self) -> str:
        fitted = getattr(self, "temperature_", None)
        suffix = "" if fitted is None else f", temperature_={fitted:.4g}"
        return (
            f"TemperatureScaler(min_temperature={self.min_temperature}, "
            f"max_temperature={self.max_temperature}{suffix})"
        )


def grid_search_temperature(
    option_logprobs: Any,
    labels: Any,
    *,
    chosen: Any = None,
    correct: Any = None,
) -> float:
    """The paper's reference procedure: T on the grid 0.01, 0.02, ..., 9.99 with the lowest NLL.

    Deliberately naive and independent of :class:`TemperatureScaler` (plain ``log_softmax`` per
    grid point): it is the test oracle and the benchmark baseline, not something to serve with.
    Rows with label -1 use the binary NLL of the chosen option, as in ``TemperatureScaler.fit``.
    """
    matrix = np.asarray(option_logprobs, dtype=float)
    labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    rows = np.arange(matrix.shape[0])
    multi = labels_arr >= 0
    if (~multi).any():
        chosen_arr = np.asarray(chosen, dtype=np.int64).reshape(-1)
        correct_arr = np.asarray(correct, dtype=float).reshape(-1)
    else:
        chosen_arr = labels_arr
        correct_arr = np.ones(matrix.shape[0])
    best_t, best_nll = 1.0, math.inf
    for i in range(1, 1000):
        temperature = i / 100
        logp = log_softmax(matrix / temperature, axis=1)
        nll = -logp[rows[multi], labels_arr[multi]].sum()
        if (~multi).any():
            lp_c = logp[rows[~multi], chosen_arr[~multi]]
            y = correct_arr[~multi]
            with np.errstate(divide="ignore"):
                log_wrong = np.log(-np.expm1(lp_c))
            nll -= np.where(y == 1, lp_c, log_wrong).sum()
        nll /= matrix.shape[0]
        if nll < best_nll:
            best_t, best_nll = temperature, nll
    return best_t
