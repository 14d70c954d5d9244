#!/usr/bin/env bash
# Starts one flotilla-emulator stack for a whole test run, in the background, and prints its
# environment as `export NAME=value` lines on stdout (nothing else goes to stdout).
#
#   eval "$(crates/emulator/start-for-tests.sh --parent-pid $$ --agent-seed target/debug/flotilla)"
#
# Arguments are passed to `flotilla-emulator up`; give --parent-pid so the stack (moto, every
# instance's processes) stops by itself when the test run ends, however it ends. The binary is
# target/debug/flotilla-emulator (under $CARGO_TARGET_DIR when set): build it first. The state
# directory, with the emulator's log (emulator.log), moto's log and each instance's root (removed
# when the stack stops, unless --keep-instances is given), is printed as FLOTILLA_EMULATOR_STATE;
# the emulator's pid as FLOTILLA_EMULATOR_PID.
# The first run creates the Python environment with moto (about 35 s, needs PyPI).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
binary="${CARGO_TARGET_DIR:-$root/target}/debug/flotilla-emulator"
if [[ ! -x "$binary" ]]; then
  echo "start-for-tests.sh: $binary is missing; build it with \`cargo build -p flotilla-emulator\`" >&2
  exit 1
fi

state="$(mktemp -d "${TMPDIR:-/tmp}/flotilla-emulator-tests.XXXXXX")"
log="$state/emulator.log"
echo "start-for-tests.sh: starting flotilla-emulator; log: $log" >&2
"$binary" up --state-dir "$state" --env-file "$state/env" "$@" </dev/null >/dev/null 2>"$log" &
pid=$!

# Ten minutes: a first run creates the Python environment.
deadline=$((SECONDS + 600))
until [[ -s "$state/env" ]]; do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "start-for-tests.sh: flotilla-emulator exited before it was ready; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "start-for-tests.sh: flotilla-emulator was not ready within 10 minutes; its log:" >&2
    cat "$log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
  fi
  sleep 0.2
done

cat "$state/env"
echo "export FLOTILLA_EMULATOR_PID=$pid"
