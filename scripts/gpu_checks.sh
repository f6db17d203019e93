#!/usr/bin/env bash
# The one prepared GPU check (<= 10 min on a lent H100): see scripts/gpu_checks.py for the stages.
#
#   bash scripts/gpu_wheels.sh               # first, on the CPU machine: pydantic + ijson wheels in .whl/
#   scripts/gpu_checks.sh --dry-run          # print the plan (any machine, CPU only)
#   scripts/gpu_checks.sh                    # on the GPU machine; results in $OUT/gpu-checks.tar.gz
#
# The device call: carry [".whl"], command "bash scripts/gpu_checks.sh", timeout_s 600. The GPU image
# lacks pydantic and ijson (shared/docs/measured-on-h100.md); gpu_wheels.sh fetches a set that imports
# together under Python 3.12. Afterwards, on the CPU machine:
#   python scripts/adopt_gpu_checks.py FILES_AT    # bundles -> traces/samples/h100-profiled/, README
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--dry-run" ]]; then
    exec python3 scripts/gpu_checks.py --dry-run "${@:2}"
fi

OUT="${OUT:-$PWD/gpu-checks-out}"
WORK="${GPU_CHECKS_WORK:-/tmp/gpu-checks}"
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1
# Nsight Compute is installed under /opt/nvidia/nsight-compute/<version>/ on the lent machines
# (KINDS.md), not always on PATH
for dir in /usr/local/cuda/bin /opt/nvidia/nsight-compute/*/; do
    [[ -x "$dir/ncu" ]] && PATH="$PATH:${dir%/}"
done
export PATH

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! python3 -c "import pydantic, ijson, torch" 2>"$OUT/import-error.txt"; then
    echo "gpu_checks: missing Python packages ($(tail -n 1 "$OUT/import-error.txt")); run scripts/gpu_wheels.sh and carry .whl"
    exit 2
fi

rm -f "$OUT/import-error.txt"
# 580 s of the device's 600 s per command, less what the install and imports above took ($SECONDS);
# the orchestrator cuts each stage to what is left and packs after each; this limit guards the whole
LIMIT_S=$(( ${GPU_CHECKS_LIMIT_S:-580} - SECONDS ))
timeout --kill-after=5 "$LIMIT_S" python3 scripts/gpu_checks.py --out "$OUT" --work "$WORK" \
    --limit-s "$((LIMIT_S - 5))" "$@"
rc=$?
if [[ ! -f "$OUT/gpu-checks.tar.gz" && ! -f "$OUT/gpu-checks.tar.gz.part00" && -d "$WORK" ]]; then
    python3 scripts/gpu_checks.py --pack-only --out "$OUT" --work "$WORK"  # cut off before any packing
fi
rm -f "$OUT"/packing*.tmp  # a packing cut off midway; the previous one stands
exit $rc
