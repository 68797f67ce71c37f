"""Typed views over the gateway's responses: the OpenAI body plus its `calibration` object."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Calibration:
    """The `calibration` object the gateway adds to every response (names are the API contract)."""

    id: str
    confidence: float | None
    raw_confidence: float | None
    method: str
    threshold: float | None
    abstained: bool
    profile_version: int
    temperature: float | None = None
    abstain_reason: str | None = None
    answer: str | None = None
    option_probs: dict[str, float] | None = None
    # Options mode, once a refit fitted the conformal table: the labels that hold the true one
    # with probability `set_coverage` (docs/api.md, "Prediction sets").
    prediction_set: list[str] | None = None
    set_coverage: float | None = None
    # Only when the visual-reliance probe ran (docs/api.md, "Visual-reliance probe").
    visual_reliance: float | None = None
    visual_probe: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            id=str(data.get("id", "")),
            confidence=data.get("confidence"),
            raw_confidence=data.get("raw_confidence"),
            method=str(data.get("method", "none")),
            threshold=data.get("threshold"),
            abstained=bool(data.get("abstained", False)),
            profile_version=int(data.get("profile_version") or 0),
            temperature=data.get("temperature"),
            abstain_reason=data.get("abstain_reason"),
            answer=data.get("answer"),
            option_probs=data.get("option_probs"),
            prediction_set=data.get("prediction_set"),
            set_coverage=data.get("set_coverage"),
            visual_reliance=data.get("visual_reliance"),
            visual_probe=data.get("visual_probe"),
            extra={key: value for key, value in data.items() if key not in known},
        )


@dataclass(frozen=True)
class Completion:
    """A chat or text completion: the upstream's body unchanged (`raw`) and its calibration."""

    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.raw.get("id", ""))

    @property
    def text(self) -> str:
        """The first choice's answer: message content (chat) or text (completions)."""
        choices = self.raw.get("choices") or [{}]
        first = choices[0]
        message = first.get("message")
        if isinstance(message, dict):
            return message.get("content") or ""
        return first.get("text") or ""

    @property
    def calibration(self) -> Calibration | None:
        data = self.raw.get("calibration")
        return Calibration.from_dict(data) if isinstance(data, dict) else None

    @property
    def feedback_id(self) -> str:
        """The id to post feedback with (the calibration id, else the response id)."""
        calibration = self.calibration
        return calibration.id if calibration and calibration.id else self.id


@dataclass
class StreamResult:
    """What a finished stream adds up to: the text, the last chunk's id and the calibration."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    calibration: Calibration | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def id(self) -> str:
        return str(self.chunks[0].get("id", "")) if self.chunks else ""

    def add(self, chunk: dict[str, Any]) -> None:
        self.chunks.append(chunk)
        if isinstance(chunk.get("calibration"), dict):
            self.calibration = Calibration.from_dict(chunk["calibration"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            piece = delta.get("content") if isinstance(delta, dict) else None
            piece = piece if piece is not None else choice.get("text")
            if piece:
                self.text_parts.append(piece)
