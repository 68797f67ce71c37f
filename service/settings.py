"""Gateway settings: CLI flags > environment (`CALIB_*`) > YAML config file > defaults.

The YAML file (``--config`` / ``CALIB_CONFIG``) holds the same keys as the environment, plus the
``models`` mapping that configures each served model (see docs/configuration.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from calibrators.scoring import SEQUENCE_FEATURE_SETS
from calibrators.vocab import AbstainPolicy, Mode, Scoring

SystemPromptPolicy = Literal["prepend", "replace", "off"]
Perturbation = Literal["blank", "noise", "blur"]


def read_key_file(path: Path, what: str) -> SecretStr:
    """The key in `path` (surrounding whitespace stripped), read once at start-up.

    Errors name the file, never its content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise ValueError(f"{what}: cannot read {path}: {reason}") from None
    key = checked_key(text, f"{what} ({path})")
    if key is None:
        raise ValueError(f"{what}: {path} is empty")
    return key


def checked_key(value: str | SecretStr | None, what: str) -> SecretStr | None:
    """A bearer key as sent upstream: stripped, visible ASCII only (it goes into an HTTP header
    verbatim, so CR/LF or spaces would corrupt the request); empty means no key."""
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    text = text.strip()
    if not text:
        return None
    if any(not 0x21 <= ord(char) <= 0x7E for char in text):
        raise ValueError(f"{what} must be visible ASCII characters only (no spaces or newlines)")
    return SecretStr(text)


def _empty_as_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def default_data_dir() -> Path:
    """Where the gateway and the embedded engine keep state (`CALIB_DATA_DIR`)."""
    return Path(os.environ.get("CALIB_DATA_DIR", Path.home() / ".cache" / "mllm-calib"))


class VisualProbeConfig(BaseModel):
    """The visual-reliance probe of a model (docs/api.md, "Visual-reliance probe")."""

    enabled: bool = Field(
        False, description="Probe answers with images (a request's `visual_probe` overrides)."
    )
    sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of eligible requests probed when enabled."
    )
    perturbation: Perturbation = Field(
        "blank", description="How each image is perturbed: blank (uniform grey), noise, blur."
    )
    timeout_s: float | None = Field(
        None, gt=0, description="Give up on the probe after this long (default: upstream timeout)."
    )
    low_reliance_floor: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Answers with visual reliance below this count as ignoring the image "
        "(`calib_visual_reliance_low_share`).",
    )


class ModelConfig(BaseModel):
    """Per-model configuration: where it is served and how its answers are calibrated."""

    model_config = ConfigDict(hide_input_in_errors=True)  # keys must not reach error messages

    upstream: str | None = Field(
        None, description="Base URL of this model's upstream; defaults to the global upstream."
    )
    api_key: SecretStr | None = Field(
        None,
        description="Bearer key for this model's upstream; default: the global key, but only "
        "when the model uses the global upstream (it is never sent to another host).",
    )
    api_key_file: Path | None = Field(
        None, description="File holding `api_key` (read at start-up; `api_key` wins if both)."
    )
    served_name: str | None = Field(
        None, description="The model name the upstream knows; defaults to the key in `models`."
    )
    mode: Mode | None = Field(
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
    scoring: Scoring = Field(
        "path",
        description="Options mode: read the option distribution off the generated tokens "
        "(path) or score every option's text after the prompt in one extra request (likelihood).",
    )
    set_coverage: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Options mode: target coverage of `calibration.prediction_set` (split "
        "conformal; a request's `calibration.set_coverage` overrides it).",
    )

    visual_probe: VisualProbeConfig = Field(
        default_factory=VisualProbeConfig,
        description="Ask again with each image perturbed to measure how much the answer relies "
        "on it (`calibration.visual_reliance`).",
    )

    _empty_key = field_validator("api_key", "api_key_file", mode="before")(_empty_as_none)

    @model_validator(mode="after")
    def _resolve_key(self) -> ModelConfig:
        self.api_key = checked_key(self.api_key, "api_key")
        if self.api_key is None and self.api_key_file is not None:
            self.api_key = read_key_file(self.api_key_file, "api_key_file")
        return self


class Settings(BaseSettings):
    """Everything the gateway process needs to know at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="CALIB_", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    upstream: str = Field(
        "http://127.0.0.1:8011/v1", description="OpenAI-style base URL of the upstream engine."
    )
    upstream_api_key: SecretStr | None = Field(
        None,
        description="Sent as `Authorization: Bearer <key>` on every call to the global upstream "
        "(vLLM's `--api-key`).",
    )
    upstream_api_key_file: Path | None = Field(
        None,
        description="File holding the upstream key (read at start-up); `upstream_api_key` wins.",
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
    # --- metric labels (docs/metrics.md, "Label hygiene") ------------------------------------
    upstream_models_refresh_s: float = Field(
        60.0,
        gt=0,
        description="How often the upstream's model list is fetched: only configured models and "
        "models it lists get their own `model` label on /metrics; a failed fetch keeps the last "
        "list.",
    )
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    default_model: ModelConfig = Field(default_factory=ModelConfig)

    # --- input-shift gauge (docs/refit.md, "Input shift"); env CALIB_SHIFT_* ----------------
    shift_enabled: bool = Field(
        True, description="Embed request inputs and compare them with the profile's fit window."
    )
    shift_window: int = Field(500, ge=10, description="Newest requests per (model, task) window.")
    shift_reference_size: int = Field(
        1000, ge=10, description="Most fit-window predictions in a reference sample."
    )
    shift_alpha: float = Field(
        0.01, gt=0, lt=0.5, description="False-alarm rate of a window from the reference's data."
    )
    shift_permutations: int = Field(499, ge=19, le=10_000, description="Permutations per test.")
    shift_min_samples: int = Field(
        20, ge=2, description="A modality is tested once window and reference have this many."
    )

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
    refit_feature_sets: tuple[tuple[str, ...], ...] = Field(
        (*SEQUENCE_FEATURE_SETS, ("confidence_logit", "visual_reliance")),
        description=(
            "Multi-feature logistic candidates of a refit, each a list of feature names "
            "(`confidence_logit` or a recorded signal); fitted when the labels carry the signals."
        ),
    )
    refit_min_signal_share: float = Field(
        0.5, gt=0, le=1, description="A signal is carried when this share of labels measured it."
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

    _empty_key = field_validator("upstream_api_key", "upstream_api_key_file", mode="before")(
        _empty_as_none
    )

    @model_validator(mode="after")
    def _resolve_key(self) -> Settings:
        self.upstream_api_key = checked_key(self.upstream_api_key, "upstream_api_key")
        if self.upstream_api_key is None and self.upstream_api_key_file is not None:
            self.upstream_api_key = read_key_file(
                self.upstream_api_key_file, "upstream_api_key_file"
            )
        return self

    def upstream_key_for(self, config: ModelConfig) -> str | None:
        """The bearer key for `config`'s upstream: its own key, else the global key when it is
        served by the global upstream. The global key never goes to another host."""
        if config.api_key is not None:
            return config.api_key.get_secret_value()
        same_host = config.upstream is None or config.upstream.rstrip("/") == self.upstream
        if same_host and self.upstream_api_key is not None:
            return self.upstream_api_key.get_secret_value()
        return None

    def upstream_keys(self, model: str) -> dict[str, str]:
        """Keys by upstream base URL for jobs that replay `model` (prompt optimization): the
        global upstream's key, and `model`'s own upstream with its key."""
        keys: dict[str, str] = {}
        if self.upstream_api_key is not None:
            keys[self.upstream] = self.upstream_api_key.get_secret_value()
        config = self.model_settings(model)
        key = self.upstream_key_for(config)
        if key is not None:
            keys[self.upstream_base_for(config)] = key
        return keys

    def upstream_base_for(self, config: ModelConfig) -> str:
        """The base URL `config`'s model is served from (no trailing slash)."""
        return (config.upstream or self.upstream).rstrip("/")

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
        sources: list[PydanticBaseSettingsSource] = [
            _KeyBeforeFile(settings_cls, init_settings),
            _KeyBeforeFile(settings_cls, env_settings),
        ]
        config_file = _config_file_from(init_settings)
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


class _KeyBeforeFile(PydanticBaseSettingsSource):
    """A source that gives `upstream_api_key_file` hides lower sources' `upstream_api_key`.

    So the key comes from the highest source naming either (flags > env > YAML), and within
    one source the key itself wins over the file.
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        values = self.inner()
        if values.get("upstream_api_key_file") is not None and "upstream_api_key" not in values:
            values = {**values, "upstream_api_key": None}
        return values


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
