#!/usr/bin/env bash
# Local metrics chain: see metrics.py for usage (up | down | status | prometheus-url | adapter-url).
exec python3 "$(dirname "$0")/metrics.py" "$@"
