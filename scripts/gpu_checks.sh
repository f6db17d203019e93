#!/usr/bin/env bash
# The one prepared GPU check (<= 10 min on a lent H100): see scripts/gpu_checks.py for the stages.
#
#   scripts/gpu_checks.sh --dry-run          # print the plan (any machine, CPU only)
#   scripts/gpu_checks.sh                    # on the GPU machine; results in $OUT/gpu-checks.tar.gz
#
# The GPU image lacks pydantic and ijson (shared/docs/measured-on-h100.md). Bring them as Python 3.12
# wheels in .whl/ (ignored by git, named in the device call's `carry`), prepared on a CPU machine with:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pydantic pydantic-core annotated-types typing-inspection ijson
# (pick versions matching pyproject.toml; keep one version of each).
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--dry-run" ]]; then
    exec python3 scripts/gpu_checks.py --dry-run "${@:2}"
fi

OUT="${OUT:-$PWD/gpu-checks-out}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import pydantic, ijson, torch" 2>"$OUT/import-error.txt"; then
    echo "gpu_checks: missing Python packages ($(tail -n 1 "$OUT/import-error.txt")); carry wheels in .whl/"
    exit 2
fi

# The stages keep their own budgets (530 s in all); this outer limit only guards the packing step.
timeout 585 python3 scripts/gpu_checks.py --out "$OUT" "$@"
rc=$?
if [[ ! -e "$OUT/gpu-checks.tar.gz" && ! -e "$OUT/gpu-checks.tar.gz.part00" && -d "$OUT/gpu-checks" ]]; then
    tar -C "$OUT" -czf "$OUT/gpu-checks.tar.gz" gpu-checks   # the orchestrator was cut off: pack what exists
fi
rm -rf "$OUT/gpu-checks"  # only the archive travels back (8 files at most)
exit $rc
