"""`calib serve`: run the gateway with uvicorn (uvloop + httptools when installed)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import typer


def _best(module: str, preferred: str, fallback: str) -> str:
    return preferred if importlib.util.find_spec(module) is not None else fallback


def serve(
    host: str = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port to bind (default 8080)."),
    upstream: str = typer.Option(
        None, help="OpenAI-style base URL of the engine, e.g. http://127.0.0.1:8011/v1."
    ),
    upstream_api_key: str = typer.Option(
        None,
        help="Bearer key the upstream (vLLM --api-key) expects; visible in `ps`, so prefer "
        "CALIB_UPSTREAM_API_KEY or --upstream-api-key-file.",
        show_default=False,
    ),
    upstream_api_key_file: Path = typer.Option(
        None, help="File holding the upstream key (read once at start-up)."
    ),
    db: str = typer.Option(None, help="SQLAlchemy URL of the store (default SQLite in data dir)."),
    config: Path = typer.Option(None, help="YAML file with settings and per-model config."),
    workers: int = typer.Option(None, help="Worker processes (default 1)."),
    insecure: bool = typer.Option(
        None, "--insecure", help="Allow a non-loopback bind without API keys (dangerous)."
    ),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve the calibration gateway (OpenAI-compatible API on /v1).

    Examples:

      calib serve --upstream http://127.0.0.1:8011/v1

      calib serve --host 0.0.0.0 --workers 4 --config calib.yaml \
      --db postgresql+psycopg://calib@db/calib

      CALIB_ADMIN_KEY=sk-calib-admin calib serve --upstream http://vllm:8000/v1

      CALIB_UPSTREAM_API_KEY_FILE=/run/secrets/vllm-key calib serve --upstream http://vllm:8000/v1
    """
    import uvicorn
    from pydantic import ValidationError

    from service.settings import load_settings

    overrides = {
        "host": host,
        "port": port,
        "upstream": upstream,
        "upstream_api_key": upstream_api_key,
        "upstream_api_key_file": upstream_api_key_file,
        "db": db,
        "config": config,
        "workers": workers,
        "insecure": insecure,
    }
    try:
        settings = load_settings(**overrides)
    except (ValidationError, FileNotFoundError) as error:
        typer.echo(f"calib serve: invalid settings:\n{error}", err=True)
        raise typer.Exit(2) from None
    loop = _best("uvloop", "uvloop", "asyncio")
    http = _best("httptools", "httptools", "h11")
    if settings.workers > 1:
        # Worker processes build their own app from the environment: pass the flags down.
        for key, value in overrides.items():
            if value is not None:
                os.environ[f"CALIB_{key.upper()}"] = str(value)
        # Request metrics of all workers are merged from files (see service/metrics.py); the
        # directory must be set before a worker imports prometheus-client.
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            from service.metrics import prepare_multiprocess_dir

            directory = prepare_multiprocess_dir(settings.data_dir / "prometheus-multiproc")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            loop=loop,
            http=http,
            log_level=log_level,
        )
        return

    from service.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop=loop,
        http=http,
        log_level=log_level,
    )
