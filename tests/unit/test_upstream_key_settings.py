"""Where the upstream key comes from (flags > env > YAML; within one, the key before its file),
which upstream gets which key, and that no representation of the settings shows it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import ModelConfig, load_settings

SECRET = "sk-upstream-unit-4d4d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CALIB_UPSTREAM_API_KEY", "CALIB_UPSTREAM_API_KEY_FILE", "CALIB_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CALIB_DATA_DIR", str(tmp_path))


def _key(**overrides: object) -> str | None:
    settings = load_settings(**overrides)
    return settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_precedence_flags_then_env_then_yaml_and_the_key_before_its_file(monkeypatch, tmp_path):
    yaml = _file(tmp_path, "c.yaml", "upstream_api_key: from-yaml\n")
    env_file = _file(tmp_path, "env.key", "from-env-file\n")
    flag_file = _file(tmp_path, "flag.key", "from-flag-file")

    assert _key() is None
    assert _key(config=yaml) == "from-yaml"
    monkeypatch.setenv("CALIB_UPSTREAM_API_KEY_FILE", str(env_file))
    assert _key(config=yaml) == "from-env-file"  # env beats YAML, even as a file
    monkeypatch.setenv("CALIB_UPSTREAM_API_KEY", "from-env")
    assert _key(config=yaml) == "from-env"  # within the environment the key beats the file
    assert _key(config=yaml, upstream_api_key_file=flag_file) == "from-flag-file"  # flags first
    assert _key(upstream_api_key="from-flag", upstream_api_key_file=flag_file) == "from-flag"


def test_an_empty_value_means_no_key_and_whitespace_is_stripped(monkeypatch):
    monkeypatch.setenv("CALIB_UPSTREAM_API_KEY", "")
    assert _key() is None
    monkeypatch.setenv("CALIB_UPSTREAM_API_KEY", f"  {SECRET}\n")
    assert _key() == SECRET


def test_no_representation_of_the_settings_shows_a_key(tmp_path):
    settings = load_settings(
        upstream_api_key=SECRET,
        models={"m": {"upstream": "http://other:8000/v1", "api_key": SECRET + "-m"}},
    )
    for text in (repr(settings), str(settings), str(settings.model_dump()), repr(settings.models)):
        assert SECRET not in text
    assert settings.upstream_key_for(settings.models["m"]) == SECRET + "-m"


@pytest.mark.parametrize("bad", [f"{SECRET} extra", f"{SECRET}\r\nX-Injected: 1", "ключ"])
def test_a_key_that_cannot_be_a_header_is_refused_without_echoing_it(bad):
    with pytest.raises(ValidationError) as caught:
        load_settings(upstream_api_key=bad)
    text = str(caught.value)
    assert "visible ASCII" in text
    assert bad not in text and "ключ" not in text and SECRET not in text


def test_key_file_errors_name_the_file_never_its_content(tmp_path):
    with pytest.raises(ValidationError) as caught:
        load_settings(upstream_api_key_file=tmp_path / "missing.key")
    assert "missing.key" in str(caught.value) and "No such file" in str(caught.value)

    empty = _file(tmp_path, "empty.key", "\n")
    with pytest.raises(ValidationError, match="is empty"):
        load_settings(upstream_api_key_file=empty)

    spaced = _file(tmp_path, "spaced.key", f"{SECRET} second-word\n")
    with pytest.raises(ValidationError) as caught:
        load_settings(upstream_api_key_file=spaced)
    assert SECRET not in str(caught.value)


def test_which_upstream_gets_which_key(tmp_path):
    per_model = _file(tmp_path, "m.key", "model-file-key\n")
    settings = load_settings(
        upstream="http://engine:8000/v1/",
        upstream_api_key="global",
        models={
            "plain": {},
            "same-host": {"upstream": "http://engine:8000/v1"},
            "own-key-same-host": {"api_key": "own"},
            "other": {"upstream": "http://other:8000/v1", "api_key": "other"},
            "other-file": {"upstream": "http://other:8000/v1", "api_key_file": str(per_model)},
            "other-nokey": {"upstream": "http://other:8000/v1"},
        },
    )
    key_for = {name: settings.upstream_key_for(c) for name, c in settings.models.items()}
    assert key_for == {
        "plain": "global",
        "same-host": "global",  # the same upstream (trailing slash or not)
        "own-key-same-host": "own",
        "other": "other",
        "other-file": "model-file-key",
        "other-nokey": None,  # the global key never goes to another host
    }
    assert settings.upstream_key_for(settings.default_model) == "global"
    assert settings.upstream_keys("other") == {
        "http://engine:8000/v1": "global",
        "http://other:8000/v1": "other",
    }
    assert settings.upstream_keys("unconfigured") == {"http://engine:8000/v1": "global"}


def test_per_model_api_key_file_is_read_when_the_config_loads(tmp_path):
    config = ModelConfig(api_key_file=_file(tmp_path, "k", f"{SECRET}\n"))
    assert config.api_key is not None and config.api_key.get_secret_value() == SECRET
    assert SECRET not in repr(config)
