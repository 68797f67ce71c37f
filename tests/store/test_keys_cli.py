"""`calib keys create|list|revoke` against a real SQLite store."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from clients.cli import app
from service.store import KEY_PREFIX, Store

runner = CliRunner()


def test_create_list_revoke(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'calib.db'}"
    created = runner.invoke(
        app, ["keys", "create", "--name", "ci", "--role", "client", "--tenant", "acme", "--db", db]
    )
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip().splitlines()[-1]
    assert plaintext.startswith(KEY_PREFIX)

    store = Store.open(db)
    record = store.find_key(plaintext)
    assert record is not None and (record.name, record.tenant) == ("ci", "acme")

    listed = runner.invoke(app, ["keys", "list", "--db", db])
    assert listed.exit_code == 0 and "ci" in listed.stdout
    assert plaintext not in listed.stdout

    revoked = runner.invoke(app, ["keys", "revoke", "ci", "--db", db])
    assert revoked.exit_code == 0, revoked.output
    assert store.find_key(plaintext) is None
    store.close()

    again = runner.invoke(app, ["keys", "revoke", "ci", "--db", db])
    assert again.exit_code == 1


def test_bad_role_and_duplicate_name_fail(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'calib.db'}"
    assert (
        runner.invoke(
            app, ["keys", "create", "--name", "x", "--role", "root", "--db", db]
        ).exit_code
        == 2
    )
    assert (
        runner.invoke(
            app, ["keys", "create", "--name", "x", "--role", "admin", "--db", db]
        ).exit_code
        == 0
    )
    assert (
        runner.invoke(
            app, ["keys", "create", "--name", "x", "--role", "admin", "--db", db]
        ).exit_code
        == 1
    )


def test_db_defaults_to_the_settings_url(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CALIB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CALIB_DB", raising=False)
    result = runner.invoke(app, ["keys", "create", "--name", "ops", "--role", "admin"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "calib.db").exists()
