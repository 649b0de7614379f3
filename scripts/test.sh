#!/usr/bin/env bash
# The test command: install, check the local services, lint, type-check, run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
./scripts/services.sh
echo "== ruff";  .venv/bin/ruff check appliance tests bench
echo "== mypy --strict appliance"; .venv/bin/mypy appliance
echo "== pytest"
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
