"""`calib keys ...`: create, list and revoke API keys in the gateway's store.

Talks to the database directly (like `alembic`), not to a running gateway: it is how the first
admin key is made. A running gateway sees new and revoked keys within seconds (its key cache).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from service.settings import load_settings
from service.store import DuplicateKeyName, KeyNotFound, Store, StoreError

app = typer.Typer(
    help="Manage API keys (stored hashed; the key is shown once).", no_args_is_help=True
)

DbOption = Annotated[
    str | None, typer.Option("--db", help="Store URL (default: CALIB_DB or the data dir's SQLite).")
]
ConfigOption = Annotated[str | None, typer.Option("--config", help="YAML settings file.")]

_err = Console(stderr=True)


def _open(db: str | None, config: str | None) -> Store:
    settings = load_settings(db=db, config=config)
    try:
        return Store.open(settings.database_url)
    except StoreError as error:
        _err.print(f"[red]cannot open the store {settings.database_url}: {error}[/red]")
        raise typer.Exit(1) from None


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A unique name for the key.")],
    role: Annotated[str, typer.Option("--role", help="client or admin.")] = "client",
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="Tenant whose data the key sees (default: default)."),
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print it once (it cannot be shown again).

    Examples:

      calib keys create --name team-a --role client --tenant team-a

      calib keys create --name ops --role admin --db postgresql+psycopg://calib@db/calib
    """
    if role not in ("client", "admin"):
        _err.print(f"[red]--role must be client or admin, not {role!r}[/red]")
        raise typer.Exit(2)
    store = _open(db, config)
    try:
        plaintext, record = store.create_key(name, role, tenant)
    except (DuplicateKeyName, ValueError) as error:
        _err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    finally:
        store.close()
    _err.print(
        f"Created {record.role} key [bold]{record.name}[/bold] (id {record.id}, tenant "
        f"{record.tenant}). Store it now: it is not shown again."
    )
    typer.echo(plaintext)


@app.command("list")
def list_keys(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """List keys (names, roles, tenants and prefixes; never the keys themselves).

    Examples:

      calib keys list
    """
    store = _open(db, config)
    try:
        records = store.list_keys(include_revoked=all_keys)
    finally:
        store.close()
    columns = ("id", "name", "role", "tenant", "prefix", "created", "revoked")
    rows = [
        (
            record.id,
            record.name,
            record.role,
            record.tenant,
            record.prefix + "…",
            record.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
            record.revoked_at.strftime("%Y-%m-%d %H:%M:%SZ") if record.revoked_at else "",
        )
        for record in records
    ]
    console = Console()
    if not console.is_terminal:  # piped: one tab-separated line per key, easy to grep/cut
        for row in [columns, *rows]:
            typer.echo("\t".join(row))
        return
    table = Table()
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="Name or id of the key to revoke.")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key (running gateways stop accepting it within seconds).

    Examples:

      calib keys revoke team-a
    """
    store = _open(db, config)
    try:
        revoked = store.revoke_key(name)
    except KeyNotFound as error:
        _err.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    finally:
        store.close()
    for record in revoked:
        typer.echo(f"revoked {record.name} ({record.id})")
