"""Pure calibration math: scoring logprobs, calibrators, metrics, thresholds, profiles.

No I/O anywhere in this package: the service and the clients feed it plain Python and numpy
values and store what ``to_dict()`` returns.
"""

from .conformal import ConformalTable, conformal_scores, fit_conformal, prediction_set
from .drift import ks_statistic, population_stability_index
from .isotonic import IsotonicCalibrator
from .logistic import CONFIDENCE_LOGIT, FeatureLogistic, confidence_logit
from .metrics import (
    ReliabilityBin,
    aurc,
    auroc,
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    risk_coverage_curve,
    selective_risk_coverage,
)
from .platt import PlattScaler
from .profile import Calibrated, Profile, apply_profile
from .prompt_search import (
    Candidate,
    Evaluation,
    ParaphraseCall,
    SearchResult,
    accuracy_bucket,
    better,
    normalize_prompt,
    rank_key,
    search_prompts,
)
from .scoring import (
    SEQUENCE_FEATURE_SETS,
    SEQUENCE_SIGNALS,
    OptionScore,
    SequenceScore,
    normalize_token,
    score_options,
    score_sequence,
)
from .shift import (
    IMAGE_EMBEDDING_DIM,
    TEXT_EMBEDDING_DIM,
    ShiftReference,
    ShiftResult,
    fit_shift_reference,
    image_embedding,
    shift_test,
    text_embedding,
)
from .temperature import TemperatureScaler, grid_search_temperature
from .threshold import ThresholdChoice, select_threshold
from .vocab import (
    ABSTAIN_POLICIES,
    ABSTAIN_REASONS,
    METHODS,
    MODES,
    SCORINGS,
    AbstainPolicy,
    AbstainReason,
    Method,
    Mode,
    Scoring,
)

__all__ = [
    "ABSTAIN_POLICIES",
    "ABSTAIN_REASONS",
    "CONFIDENCE_LOGIT",
    "IMAGE_EMBEDDING_DIM",
    "METHODS",
    "MODES",
    "SCORINGS",
    "SEQUENCE_FEATURE_SETS",
    "SEQUENCE_SIGNALS",
    "TEXT_EMBEDDING_DIM",
    "AbstainPolicy",
    "AbstainReason",
    "Calibrated",
    "Candidate",
    "ConformalTable",
    "Evaluation",
    "FeatureLogistic",
    "IsotonicCalibrator",
    "Method",
    "Mode",
    "OptionScore",
    "ParaphraseCall",
    "PlattScaler",
    "Profile",
    "ReliabilityBin",
    "Scoring",
    "SearchResult",
    "SequenceScore",
    "ShiftReference",
    "ShiftResult",
    "TemperatureScaler",
    "ThresholdChoice",
    "accuracy_bucket",
    "apply_profile",
    "aurc",
    "auroc",
    "better",
    "brier_score",
    "confidence_logit",
    "conformal_scores",
    "expected_calibration_error",
    "fit_conformal",
    "fit_shift_reference",
    "grid_search_temperature",
    "image_embedding",
    "ks_statistic",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "normalize_prompt",
    "normalize_token",
    "population_stability_index",
    "prediction_set",
    "rank_key",
    "reliability_bins",
    "risk_coverage_curve",
    "score_options",
    "score_sequence",
    "search_prompts",
    "select_threshold",
    "selective_risk_coverage",
    "shift_test",
    "text_embedding",
]
