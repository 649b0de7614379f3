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
# Three processes (pytest-xdist), a test file each at a time: most integration tests wait on
# real servers and clients, so three files share the two cores well; a file's module-scoped
# nodes are made once. APPLIANCE_TEST_WORKERS=0 runs in one process.
workers=${APPLIANCE_TEST_WORKERS:-3}
dist=()
if [ "$workers" != "0" ]; then dist=(-n "$workers" --dist loadfile); fi
.venv/bin/python -m pytest -p no:cacheprovider -q "${dist[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
