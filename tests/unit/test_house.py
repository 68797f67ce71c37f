"""The house rules of docs/architecture.md ("House table"), checked on the source: SQL lives in
`service/store/` (and the migrations) only, and `calibrators/` stays pure (nothing of `service/`
or `clients/`)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SQL_HOMES = (REPO / "service" / "store", REPO / "service" / "migrations")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_no_sql_outside_the_store() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in _sources("service", "clients", "calibrators")
        if not any(path.is_relative_to(home) for home in SQL_HOMES)
        for name in sorted(_imports(path))
        if name == "sqlalchemy" or name.startswith(("sqlalchemy.", "alembic"))
    ]
    assert offenders == []


def test_the_store_is_found_by_the_check() -> None:
    """The check above would see an import: the store's own modules do import SQLAlchemy."""
    assert any("sqlalchemy" in _imports(path) for path in (REPO / "service" / "store").glob("*.py"))


def test_calibrators_import_nothing_of_the_service_or_the_clients() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {name}"
        for path in _sources("calibrators")
        for name in sorted(_imports(path))
        if name.split(".")[0] in ("service", "clients")
    ]
    assert offenders == []
