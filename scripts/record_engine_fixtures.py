"""Re-record the real engine responses in tests/fixtures/engine/.

python scripts/record_engine_fixtures.py                 # prepare + start the embedded engine
python scripts/record_engine_fixtures.py --base-url http://127.0.0.1:8011/v1
"""

from __future__ import annotations

import argparse

from service import engine
from service.engine import EngineLayout, EngineSettings
from service.engine.record import FIXTURES_DIR, record_fixtures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--base-url", help="a running engine's /v1 URL (default: start one)")
    parser.add_argument("--model", default="gemma-3-270m", help="served model name")
    args = parser.parse_args()
    if args.base_url:
        paths = record_fixtures(args.base_url, args.model, FIXTURES_DIR)
    else:
        layout = EngineLayout.default()
        settings = EngineSettings(port=engine.free_port())
        engine.prepare(layout, settings)
        info = engine.start(settings, layout)
        try:
            paths = record_fixtures(info.base_url, info.served_model_name, FIXTURES_DIR)
        finally:
            engine.stop(layout, info.port)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
