#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one call on a lent GPU machine (its own python3, with
# jax, flax, optax, torch and timm; no ml_collections, grain or tfds needed):
#   bash scripts/bench_gpu_session.sh [OUT_DIR]
# Runs, each in its own process under its own time limit so that one failure leaves the others:
#   1. ResNet-50, 224 px, batch 256, bf16: jtl's step vs torchvision's under PyTorch AMP;
#   2. ViT-B/16 (vit_base_patch16_224), 224 px, batch 256, bf16: jtl's step vs timm's under AMP
#      (timm's attention is PyTorch's fused scaled_dot_product_attention);
#   3. experiment: 1. with the convolution and max pool of the reference formulation (--jtl-conv
#      plain; on a GPU the trainer's layers already lower to XLA's convolution, so this equals 1.).
# (jax.nn.dot_product_attention(implementation="cudnn") refused ViT's 197 tokens, jax 0.11.2.)
# One JSON line per case in OUT_DIR/<name>.jsonl and the log in OUT_DIR/<name>.log.
set -u
out=${1:-${OUT:-/tmp/jtl-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$py -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())" 2>&1 | tee -a "$out/gpu.txt"
run() {  # name, time limit (s), bench_train_step.py arguments
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    timeout "$limit" $py scripts/bench_train_step.py --device gpu "$@" >"$out/$name.log" 2>&1
    echo "rc=$?"; grep '^{' "$out/$name.log" | tail -1 | tee "$out/$name.jsonl"; grep -v '^{' "$out/$name.log" | tail -3
}
r=${REPEATS:-5}; s=${STEPS:-10}
run resnet50 ${LIMIT:-170} --cases resnet50_224_bf16 --repeats "$r" --steps "$s"
run vit_b16 ${LIMIT:-170} --cases vit_b16_224_bf16 --repeats "$r" --steps "$s"
run resnet50_plain_conv ${LIMIT:-100} --cases resnet50_224_bf16 --repeats 3 --steps "$s" --jtl-conv plain
