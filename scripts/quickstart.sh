#!/usr/bin/env bash
# One command for a newcomer: install gitpack, then run the seed scenario demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
GLOG_minloglevel=2 "${PYTHON:-python3}" scripts/demo.py
