#!/usr/bin/env bash
# All set-up and the whole test suite on a fresh machine (CPU only): the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."

# Headless Chromium for the report test (Debian's package; no browser download of its own).
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# torch: the CPU build first, so the `profile` extra's range installs nothing more.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[profile,dev]'

python3 -m ruff check .
python3 -m pytest "$@"
