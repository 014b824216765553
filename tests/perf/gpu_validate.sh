#!/usr/bin/env bash
# Validates a GPU machine in one command (at most 8 minutes on one H100), with no network, everything in one folder:
# see tests/perf/gpu_validate.py, which this runs, for the steps, the settings and --dry-run.
#
#   tests/perf/gpu_validate.sh [OUT_DIR] [--dry-run]
#
# Then commit the sample report it copies to OUT_DIR/reports/sample-gpu-<gpu name>/ under reports/.
set -uo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" tests/perf/gpu_validate.py "$@"
