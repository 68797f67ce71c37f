"""`calib engine … --model`: the settings that serve each embedded model; the unprepared path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clients.cli import app
from service.engine import EngineLayout, NotPreparedError
from service.engine.models import require_prepared, settings_for
from service.engine.process import build_command
from service.engine.vlm.prepare import (
    WEIGHTS_FILE,
    site_packages,
    vlm_is_assembled,
    vlm_is_prepared,
    weights_digest,
)


def test_tiny_vlm_serves_its_folder_on_8012(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CALIB_ENGINE_PORT", raising=False)
    layout = EngineLayout(tmp_path)
    settings = settings_for("tiny-vlm", layout)
    assert settings.port == 8012
    assert settings.served_model_name == "tiny-vlm"
    cmd = build_command(settings, layout)
    assert cmd[cmd.index("--model") + 1] == str(layout.vlm_dir)
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny-vlm"
    assert json.loads(cmd[cmd.index("--limit-mm-per-prompt") + 1]) == {"image": 1}
    assert settings_for("tiny-vlm", layout, port=9000).port == 9000


def test_gemma_stays_the_default(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CALIB_ENGINE_PORT", raising=False)
    settings = settings_for("gemma-3-270m", EngineLayout(tmp_path))
    assert (settings.port, settings.served_model_name, settings.model) == (
        8011,
        "gemma-3-270m",
        None,
    )
    with pytest.raises(ValueError, match="unknown embedded model"):
        settings_for("llama", EngineLayout(tmp_path))


def test_unprepared_vlm_says_what_to_run(tmp_path) -> None:
    layout = EngineLayout(tmp_path)
    assert not vlm_is_prepared(layout)
    with pytest.raises(NotPreparedError, match="calib engine prepare --model tiny-vlm"):
        require_prepared("tiny-vlm", layout)
    require_prepared("gemma-3-270m", layout)  # the text model's check is start()'s own
    # Prepared = assembled folder + torchvision and the shim in the engine virtualenv.
    layout.vlm_dir.mkdir(parents=True)
    layout.vlm_marker.write_text(json.dumps({"weights_sha256": weights_digest(WEIGHTS_FILE)}))
    assert not vlm_is_prepared(layout)
    sp = site_packages(layout)
    (sp / "torchvision-0.28.0.dist-info").mkdir(parents=True)
    (sp / "calib_torchvision_shim.py").write_text("")
    (sp / "calib-torchvision-shim.pth").write_text("")
    assert vlm_is_prepared(layout)


def test_a_folder_assembled_from_other_weights_is_not_prepared(tmp_path) -> None:
    """New committed weights (an update) make prepare assemble again instead of serving the old."""
    layout = EngineLayout(tmp_path)
    layout.vlm_dir.mkdir(parents=True)
    for marker in ({}, {"weights_sha256": "0" * 64}, []):
        layout.vlm_marker.write_text(json.dumps(marker))
        assert not vlm_is_assembled(layout)
    layout.vlm_marker.write_text("not json")
    assert not vlm_is_assembled(layout)
    layout.vlm_marker.write_text(json.dumps({"weights_sha256": weights_digest(WEIGHTS_FILE)}))
    assert vlm_is_assembled(layout)


def test_cli_start_refuses_an_unprepared_vlm(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CALIB_DATA_DIR", str(tmp_path))
    result = CliRunner().invoke(app, ["engine", "start", "--model", "tiny-vlm"])
    assert result.exit_code == 1
    assert "calib engine prepare --model tiny-vlm" in " ".join(result.output.split())
    bad = CliRunner().invoke(app, ["engine", "start", "--model", "nope"])
    assert bad.exit_code == 2


def test_train_recipe_chains_each_run_to_the_files_it_needs(tmp_path) -> None:
    """Every `{outK}`/`{codesK}` names an earlier run's output, which train_codes.py writes."""
    from service.engine.vlm.prepare import TRAIN_RECIPE, recipe_commands

    commands = recipe_commands(Path("py"), Path("gemma"), tmp_path / "w.safetensors")
    assert len(commands) == len(TRAIN_RECIPE)
    written: set[str] = set()
    for cmd, out in commands:
        assert cmd[1].endswith("train_codes.py") and cmd[3] == str(out)
        assert "{" not in " ".join(cmd)
        for flag in ("--init", "--codes-in"):
            if flag in cmd:
                assert cmd[cmd.index(flag) + 1] in written
        written |= {str(out), str(out.with_suffix(".codes.safetensors"))}
        assert cmd[-2:] == ["--threads", "1"]
    first = commands[0][0]
    assert int(first[first.index("--code-steps") + 1]) > 0  # the code table comes first
