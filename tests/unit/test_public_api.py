"""The names other packages code against are all exported from `calibrators`."""

from __future__ import annotations

import calibrators

CONTRACT = {
    "normalize_token", "OptionScore", "SequenceScore", "score_options", "score_sequence",
    "TemperatureScaler", "grid_search_temperature", "PlattScaler", "IsotonicCalibrator",
    "expected_calibration_error", "maximum_calibration_error", "brier_score",
    "negative_log_likelihood", "auroc", "aurc", "risk_coverage_curve", "reliability_bins",
    "ReliabilityBin", "selective_risk_coverage", "ThresholdChoice", "select_threshold",
    "population_stability_index", "ks_statistic", "Profile", "Calibrated", "apply_profile",
    "Mode", "AbstainPolicy", "AbstainReason", "Method", "Scoring",
    "MODES", "ABSTAIN_POLICIES", "ABSTAIN_REASONS", "METHODS", "SCORINGS",
    "FeatureLogistic", "CONFIDENCE_LOGIT", "confidence_logit", "SEQUENCE_SIGNALS",
    "SEQUENCE_FEATURE_SETS",
    "text_embedding", "image_embedding", "fit_shift_reference", "shift_test", "ShiftReference",
    "ShiftResult", "TEXT_EMBEDDING_DIM", "IMAGE_EMBEDDING_DIM",
    "ConformalTable", "conformal_scores", "fit_conformal", "prediction_set",
}  # fmt: skip


def test_every_contract_name_is_exported_and_listed_in_all() -> None:
    assert set(calibrators.__all__) >= CONTRACT
    for name in calibrators.__all__:
        assert getattr(calibrators, name) is not None
