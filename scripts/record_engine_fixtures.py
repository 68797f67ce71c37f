"""Re-record the real engine responses in tests/fixtures/engine/.

python scripts/record_engine_fixtures.py                 # prepare + start the embedded engine
python scripts/record_engine_fixtures.py --base-url http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import argparse

from service import engine
from service.engine import EngineLayout, EngineSettings
from service.engine.record import FIXTURES_DIR, record_fixtures, record_string_options


def _record(base_url: str, model: str, only_string_options: bool) -> list:
    paths = [] if only_string_options else record_fixtures(base_url, model, FIXTURES_DIR)
    return [*paths, record_string_options(base_url, model, FIXTURES_DIR)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--base-url", help="a running engine's /v1 URL (default: start one)")
    parser.add_argument("--model", default="gemma-3-270m", help="served model name")
    parser.add_argument(
        "--string-options-only", action="store_true", help="only string_options.json"
    )
    args = parser.parse_args()
    if args.base_url:
        paths = _record(args.base_url, args.model, args.string_options_only)
    else:
        layout = EngineLayout.default()
        settings = EngineSettings(port=engine.free_port())
        engine.prepare(layout, settings)
        info = engine.start(settings, layout)
        try:
            paths = _record(info.base_url, info.served_model_name, args.string_options_only)
        finally:
            engine.stop(layout, info.port)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
