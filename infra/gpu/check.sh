#!/usr/bin/env bash
# The GPU device check of issue 24 (infra/gpu/README.md): the packaged cross-encoder on a GPU,
# alone, against fp32, and through the rerank worker's scheduler; one JSON and one Markdown
# table under $OUT.
#
#   infra/gpu/check.sh              on the device machine (CUDA; installs the carried .whl/)
#   infra/gpu/check.sh --dry-run    on a CPU machine, tiny sizes (CI runs this)
#
# Environment: PYTHON (default python3: on the device, the one that holds CUDA torch), OUT
# (default $TMPDIR/gpu-check-out). Further arguments go to `python -m
# rankstream.workers.tools.gpu_check` (--no-pipeline, --int8-dir DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-${TMPDIR:-/tmp}/gpu-check-out}"
DRY_RUN=false
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && DRY_RUN=true; done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
SITE="$WORK/site"
mkdir -p "$SITE" "$OUT"

# The wheels infra/gpu/fetch-wheels.sh put in .whl/ (Python 3.12, for the device). A dry run
# uses the project's own environment instead: those wheels do not fit another Python.
ARGS=()
if [[ "$DRY_RUN" == false ]]; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "[gpu-check] installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" .whl/*.whl
    else
        echo "[gpu-check] no .whl/*.whl here: using the packages already installed"
    fi
fi
if [[ -f .whl/reranker_en/model.onnx ]]; then
    ARGS+=(--int8-dir .whl/reranker_en)
fi

# rankstream itself, mapped as pyproject.toml maps it (shared/ is the package, workers/ its
# `workers` subpackage), without installing it: the device's packages stay as they are.
mkdir -p "$SITE/rankstream"
cp -R shared/. "$SITE/rankstream/"
cp -R workers "$SITE/rankstream/workers"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

echo "[gpu-check] $("$PYTHON" --version) at $(command -v "$PYTHON"); out: $OUT"
"$PYTHON" -m rankstream.workers.tools.gpu_check --out "$OUT" --work "$WORK" \
    ${ARGS[@]+"${ARGS[@]}"} "$@"
