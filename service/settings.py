"""Gateway settings: CLI flags > environment (`CALIB_*`) > YAML config file > defaults.

The YAML file (``--config`` / ``CALIB_CONFIG``) holds the same keys as the environment, plus the
``models`` mapping that configures each served model (see docs/configuration.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

AbstainPolicy = Literal["annotate", "replace", "off"]
CalibrationMode = Literal["options", "sequence"]
SystemPromptPolicy = Literal["prepend", "replace", "off"]


def default_data_dir() -> Path:
    """Where the gateway and the embedded engine keep state (`CALIB_DATA_DIR`)."""
    return Path(os.environ.get("CALIB_DATA_DIR", Path.home() / ".cache" / "mllm-calib"))


class ModelConfig(BaseModel):
    """Per-model configuration: where it is served and how its answers are calibrated."""

    upstream: str | None = Field(
        None, description="Base URL of this model's upstream; defaults to the global upstream."
    )
    served_name: str | None = Field(
        None, description="The model name the upstream knows; defaults to the key in `models`."
    )
    mode: CalibrationMode | None = Field(
        None, description="Default calibration mode; inferred from `options` when not set."
    )
    options: list[str] | None = Field(None, description="Default answer options (options mode).")
    idk_option: str | None = Field(None, description="The option label that means 'I don't know'.")
    idk_message: str = Field("I don't know.", description="Content returned when abstaining.")
    add_idk_option: bool = Field(
        False, description="Add an 'I don't know' choice to options requests (docs/idk.md)."
    )
    idk_text: str = Field("I don't know", description="How the added IDK choice reads.")
    idk_label: str | None = Field(
        None, description="Label of the added IDK choice; default: next letter, or the text."
    )
    abstain: AbstainPolicy = "annotate"
    system_prompt: str | None = None
    system_prompt_policy: SystemPromptPolicy = Field(
        "prepend",
        description="prepend: add ours before the client's system message; replace: use ours "
        "instead; off: never inject.",
    )
    top_logprobs: int = Field(20, ge=1, le=20, description="K requested from the upstream.")
    scoring: Literal["path", "likelihood"] = Field(
        "path",
        description="Options mode: read the option distribution off the generated tokens "
        "(path) or score every option's text after the prompt in one extra request (likelihood).",
    )


class Settings(BaseSettings):
    """Everything the gateway process needs to know at start-up."""

    model_config = SettingsConfigDict(env_prefix="CALIB_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    upstream: str = Field(
        "http://127.0.0.1:8011/v1", description="OpenAI-style base URL of the upstream engine."
    )
    db: str | None = Field(None, description="SQLAlchemy URL; default SQLite in the data dir.")
    config: Path | None = Field(None, description="YAML file with settings and `models`.")
    data_dir: Path = Field(default_factory=default_data_dir)
    admin_key: str | None = Field(None, description="Bootstrap admin API key.")
    insecure: bool = Field(False, description="Allow serving a non-loopback address without keys.")
    workers: int = Field(1, ge=1)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    upstream_timeout_s: float = Field(120.0, gt=0)
    upstream_connect_timeout_s: float = Field(5.0, gt=0)
    upstream_max_connections: int = Field(512, ge=1)
    opentelemetry: bool = Field(
        False,
        description="Let FastAPI's native OpenTelemetry instrumentation (FastAPI >= 0.16x) trace "
        "requests when a provider is configured; off: its per-request provider check cost ~6 % "
        "of the gateway's CPU, and the gateway exports Prometheus metrics itself.",
    )
    prediction_flush_interval_s: float = Field(0.1, gt=0)
    prediction_batch_size: int = Field(256, ge=1)
    prediction_buffer_limit: int = Field(50_000, ge=1)
    store_request_content: bool = Field(
        False, description="Keep request messages/prompts with predictions (needed for replay)."
    )
    feedback_max_batch: int = Field(1000, ge=1, description="Most items per feedback request.")
    # --- security (docs/security.md) -----------------------------------------------------------
    feedback_rate_per_s: float | None = Field(
        100.0,
        ge=0,
        description="Feedback items per second per client key (token bucket; 0/None: no limit).",
    )
    feedback_burst: int = Field(
        2000, ge=1, description="Feedback items a client key may post at once (bucket size)."
    )
    metrics_key: str | None = Field(
        None, description="When set, `/metrics` needs `Authorization: Bearer <metrics_key>`."
    )
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    default_model: ModelConfig = Field(default_factory=ModelConfig)

    # --- refit (docs/refit.md); env CALIB_REFIT_* -------------------------------------------
    refit_enabled: bool = Field(True, description="Run the in-process refit scheduler.")
    refit_interval_s: float = Field(
        3600.0, gt=0, description="Refit a (model, task) with new labels at least this often."
    )
    refit_new_labels: int = Field(
        500, ge=1, description="Refit as soon as this many new labels arrived since the last."
    )
    refit_poll_s: float = Field(5.0, gt=0, description="How often the scheduler looks.")
    refit_min_labels: int = Field(50, ge=2, description="Fewer labels: never activate.")
    refit_holdout_fraction: float = Field(0.3, gt=0, lt=1)
    refit_isotonic_min_labels: int = Field(1000, ge=2)
    refit_threshold_method: Literal["ltt", "coverage"] = "ltt"
    refit_target_risk: float = Field(0.1, gt=0, lt=1, description="LTT selective risk alpha.")
    refit_delta: float = Field(0.1, gt=0, lt=1, description="LTT: holds w.p. 1 - delta.")
    refit_target_coverage: float | None = Field(
        None, ge=0, le=1, description="Threshold method `coverage`: fraction to answer."
    )
    refit_max_age_s: float | None = Field(
        30 * 86400.0, gt=0, description="Rolling window: labels older than this are not used."
    )
    refit_max_labels: int = Field(
        1_000_000, ge=2, description="Rolling window: at most the newest N labels."
    )
    refit_lease_ttl_s: float = Field(
        600.0, gt=0, description="The refit lease expires this long after its last renewal."
    )
    refit_executor: Literal["process", "thread"] = Field(
        "process", description="Where a refit runs: a worker process (default) or a thread."
    )

    @field_validator("upstream")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def database_url(self) -> str:
        """The store URL, SQLite in the data dir unless `db` is given."""
        if self.db:
            return self.db
        return f"sqlite:///{self.data_dir / 'calib.db'}"

    def model_settings(self, model: str) -> ModelConfig:
        """Configuration for `model`, falling back to `default_model` for unlisted models."""
        return self.models.get(model, self.default_model)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file_from(init_settings)
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def _config_file_from(init_settings: PydanticBaseSettingsSource) -> Path | None:
    value: Any = init_settings().get("config") or os.environ.get("CALIB_CONFIG")
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return path


def load_settings(**overrides: Any) -> Settings:
    """Build settings from flags (`overrides`, None values ignored), env and the YAML file."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
