"""Foreground `calib engine start` for containers: exec the vLLM OpenAI server as PID 1.

`calib engine start` launches the engine in the background and returns once it is healthy (right
for a laptop); a container needs the server itself in the foreground so that the runtime sees it
exit and its SIGTERM reaches vLLM. This builds exactly the argv and environment `calib engine
start` would (`service.engine.process.build_command` / `build_env`, settings from
`CALIB_ENGINE_*`) and replaces this process with it. Extra arguments are appended to vLLM's.
"""

from __future__ import annotations

import os
import sys

from service.engine import EngineLayout, EngineSettings
from service.engine.prepare import is_prepared
from service.engine.process import build_command, build_env


def main(argv: list[str]) -> None:
    settings = EngineSettings()
    layout = EngineLayout.default()
    if settings.uses_embedded_model and not is_prepared(layout):
        sys.exit(f"engine-cpu: {layout.root} is not prepared; run `calib engine prepare` first")
    command = [*build_command(settings, layout), *argv]
    print("engine-cpu: exec " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, build_env(settings))


if __name__ == "__main__":
    main(sys.argv[1:])
