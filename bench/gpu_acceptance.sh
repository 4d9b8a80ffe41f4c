#!/usr/bin/env bash
# The GPU acceptance run's hf mode in one shot, on a machine that has torch, transformers and CUDA but no venv, no
# vLLM, no Ray and no network (the GPU machine lent for short checks; the repository is copied there bare):
#
#     bash bench/gpu_acceptance.sh [more bench/gpu_acceptance.py flags]
#
# Writes $OUT/gpu_acceptance.json and $OUT/gpu_acceptance.log ($OUT defaults to bench/results). The hf mode needs
# torch, transformers (with its tokenizers, safetensors, huggingface_hub, pyyaml) and nothing else: no optuna, cma,
# ray, vllm, datasets, matplotlib or py3langid (the run checks sys.modules and says so). Wheels carried along in
# $WHEELS (optional) are installed first without the network. A hard timeout ($TIMEOUT s, default 560) ends it
# inside one 10-minute device call.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    python -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout -k 10 "${TIMEOUT:-560}" python bench/gpu_acceptance.py --backend hf --keep-models --json "$OUT/gpu_acceptance.json" "$@" \
    2>&1 | tee "$OUT/gpu_acceptance.log"
