"""Container HEALTHCHECK: exit 0 when the process answers on loopback (no curl in the image).

python healthcheck.py            # the gateway: GET /healthz on $CALIB_PORT (default 8080)
python healthcheck.py --engine   # the vLLM engine: GET /health on $CALIB_ENGINE_PORT (8000)
"""

import os
import sys
import urllib.request


def main() -> int:
    if "--engine" in sys.argv[1:]:
        url = f"http://127.0.0.1:{os.environ.get('CALIB_ENGINE_PORT', '8000')}/health"
    else:
        url = f"http://127.0.0.1:{os.environ.get('CALIB_PORT', '8080')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"healthcheck {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
