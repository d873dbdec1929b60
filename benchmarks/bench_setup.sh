#!/usr/bin/env bash
# Fresh clone -> the README's test command: times environment creation and the test run.
# Usage: bash benchmarks/bench_setup.sh [REPO_URL_OR_PATH]  (default: this checkout)
set -euo pipefail
src=${1:-$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)}
work=$(mktemp -d)
git clone -q "$src" "$work/repo"
# keep ../shared/data reachable the way CI has it
[ -d "$src/../shared" ] && ln -s "$(cd "$src/.." && pwd)/shared" "$work/shared"
cd "$work/repo"
t0=$(date +%s); make env >/dev/null; t1=$(date +%s)
set +e; make test PYTEST_ARGS="-q" > "$work/test.log" 2>&1; rc=$?; set -e
t2=$(date +%s)
tail -1 "$work/test.log"
out="$(dirname "$0")/tables/setup.md"
{
  echo "# Fresh clone set-up"
  echo
  echo "| step | seconds |"
  echo "|---|---|"
  echo "| make env (venv + torch + package) | $((t1 - t0)) |"
  echo "| make test (whole suite, exit $rc) | $((t2 - t1)) |"
  echo
  echo "Last line: \`$(tail -1 "$work/test.log")\`"
} | tee "$src/benchmarks/tables/setup.md"
