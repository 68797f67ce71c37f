"""The SDK's typed `Calibration`: every documented field, the rest kept in `extra`."""

from __future__ import annotations

from clients.sdk.results import Calibration


def test_set_and_probe_fields_are_typed_and_unknown_keys_stay_in_extra() -> None:
    data = {
        "id": "chatcmpl-1",
        "confidence": 0.7,
        "raw_confidence": 0.8,
        "method": "temperature",
        "threshold": 0.5,
        "abstained": False,
        "profile_version": 3,
        "prediction_set": ["B", "A"],
        "set_coverage": 0.9,
        "visual_reliance": 0.42,
        "visual_probe": {"perturbation": "blank", "status": "done", "images": 1},
        "mode": "options",
        "scoring": "path",
    }
    cal = Calibration.from_dict(data)
    assert cal.prediction_set == ["B", "A"] and cal.set_coverage == 0.9
    assert cal.visual_reliance == 0.42 and cal.visual_probe == data["visual_probe"]
    assert cal.extra == {"mode": "options", "scoring": "path"}


def test_fields_a_response_does_not_carry_are_none() -> None:
    cal = Calibration.from_dict({"id": "x", "method": "none", "abstained": False})
    assert cal.prediction_set is None and cal.visual_reliance is None and cal.extra == {}
