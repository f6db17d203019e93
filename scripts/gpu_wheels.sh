#!/usr/bin/env bash
# Fetch the Python 3.12 wheels the GPU image lacks into .whl/ (ignored by git; name it in the device
# call's `carry`), then check that they import together under a local Python 3.12 exactly as
# gpu_checks.sh installs them. Run on a CPU machine with a package index, before the device call:
#   bash scripts/gpu_wheels.sh
# Versions are pinned as a set: pydantic needs its exact pydantic-core, and pydantic-core needs
# typing-extensions >= 4.14.1 (both checked on 2026-11-26 on this project's CPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
        typing-extensions==4.15.0 ijson==3.6.0)

grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

py312=""
for cand in python3.12 "${HOME:-/root}"/.pyenv/versions/3.12*/bin/python3.12; do
    if "$cand" -c pass >/dev/null 2>&1; then py312=$cand; break; fi  # a pyenv shim may exist yet fail
done
if [[ -z "$py312" ]]; then
    echo "gpu_wheels: fetched $(ls .whl | wc -l) wheels; no local python3.12 to check them with"
    exit 0
fi
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$py312" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
PYTHONPATH="$site" "$py312" -I -c "
import sys; sys.path.insert(0, '$site')
import pydantic, ijson
from pydantic import BaseModel
class M(BaseModel):
    x: int
assert M(x='3').x == 3
print('gpu_wheels: pydantic', pydantic.VERSION, '+ ijson', ijson.__version__, 'import under', sys.version.split()[0])
"
ls .whl
