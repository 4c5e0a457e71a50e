#!/usr/bin/env bash
# Simulator runner: see sim.py for usage (start NAME --model M [--port P] [flags] | stop NAME|--all | port NAME | list).
exec python3 "$(dirname "$0")/sim.py" "$@"
