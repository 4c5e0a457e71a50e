#!/usr/bin/env bash
# KEDA on the local cluster: see keda.py for usage (up | down | status).
exec python3 "$(dirname "$0")/keda.py" "$@"
