#!/bin/sh
# Entrypoint of the mllm-calib image: `calib <args>` (default `serve`), exec'd so that calib/uvicorn
# is PID 1 and gets SIGTERM directly (graceful shutdown flushes pending prediction writes).
#
# Secrets as files (docker compose `secrets:`, Kubernetes secret volumes): for each VAR below,
# VAR_FILE names a file whose content (trailing newline stripped) becomes VAR. Setting both is an
# error, as in the official postgres image.
set -eu

file_env() {
    var="$1"
    file_var="${var}_FILE"
    eval "value=\${$var:-}"
    eval "file=\${$file_var:-}"
    if [ -n "$value" ] && [ -n "$file" ]; then
        echo "calib-entrypoint: both $var and $file_var are set; set one" >&2
        exit 2
    fi
    if [ -n "$file" ]; then
        if [ ! -r "$file" ]; then
            echo "calib-entrypoint: $file_var=$file is not a readable file" >&2
            exit 2
        fi
        value="$(cat "$file")"
        export "$var=$value"
    fi
    unset "$file_var"
}

file_env CALIB_ADMIN_KEY
file_env CALIB_DB

exec calib "$@"
