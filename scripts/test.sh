#!/usr/bin/env bash
# The test command: installs what the tests need, then runs `cargo test`.
# Privileged tests (netns, links, BPF) need root; under CI=true they fail
# instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
exec cargo test "$@"
