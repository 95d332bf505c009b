#!/usr/bin/env bash
#! GPU checks of a node: CUDA logits against timm (fp32/fp16/bf16), a full run on cuda:0 against timm's own
#! transform and forward, the same run in --counts-only mode, the node-local collectives over NCCL, and
#! forward throughput against timm.
#
# Needs: an NVIDIA GPU, python3 with torch (CUDA build, the version tch was built for), timm,
# safetensors, pyarrow, scikit-image, scikit-learn; release binaries built with `--features nccl`:
#   cargo build --release -p tresnet-coordinator -p tresnet-worker --features tresnet-worker/nccl
#   TRESNET_BIN_DIR=$CARGO_TARGET_DIR/release OUT=gpu-results bash ops/gpu/check.sh
# Each step writes $OUT/<step>.json (or .log) and the script goes on after a failure; then
# ops/gpu/bounds.py checks every figure against its bound (parity in sigma, top-1 agreement, throughput
# as a fraction of timm's), printing each beside it. The last line says which steps failed; the exit
# status is 1 if any step failed or any figure missed its bound. BENCH_SECONDS shortens or lengthens the throughput windows.
set -uo pipefail
cd "$(dirname "$0")/../.."
py="${PYTHON:-python3}"
bin="${TRESNET_BIN_DIR:?set TRESNET_BIN_DIR to the folder holding tresnet-worker and tresnet-coordinator}"
out="${OUT:-gpu-results}"
secs="${BENCH_SECONDS:-6}"
mkdir -p "$out"
work="$(mktemp -d)"
failed=()
step() { # step NAME CMD...: run, keep stdout as $out/NAME.json and stderr as $out/NAME.log
  local name="$1"; shift
  echo "== $name" >&2
  if "$@" >"$out/$name.json" 2>"$out/$name.log"; then
    cat "$out/$name.json"
  else
    echo "FAILED: $name (exit $?)" >&2; tail -20 "$out/$name.log" >&2; failed+=("$name")
  fi
}

# libtorch from the Python install; libnccl under the name cudarc dlopens (pip ships only .so.2).
torchlib="$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
nccllib="$("$py" -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)"
mkdir -p "$work/lib"
[ -n "$nccllib" ] && ln -sf "$nccllib/libnccl.so.2" "$work/lib/libnccl.so"
export LD_LIBRARY_PATH="$torchlib:$work/lib:${LD_LIBRARY_PATH:-}"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$py" -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "timm", timm.__version__)'
  ldd "$bin/tresnet-worker" | grep -E "not found|torch_cuda|libc.so" || true
} >"$out/env.log" 2>&1
cat "$out/env.log"

# Seeded random-init TResNet-M (input-sensitive) with timm's CPU fp32 logits, and real photos.
"$py" ops/reference/gen_model_fixtures.py --out "$work/fx" --cases tresnet_m_224 >"$out/fixtures.log" 2>&1 \
  || { echo "fixture generation failed" >&2; cat "$out/fixtures.log" >&2; exit 1; }
"$py" ops/reference/make_sample_dataset.py --out "$work/images" >>"$out/fixtures.log" 2>&1 \
  || { echo "sample dataset failed" >&2; exit 1; }
fx="$work/fx/tresnet_m_224"
w="$fx/timm.safetensors"

# 1. Logits of the Rust port on CUDA at each precision vs timm on CUDA and timm's CPU fp32.
for p in fp32 fp16 bf16; do
  "$bin/tresnet-worker" infer --model tresnet_m --weights "$w" --input "$fx/input.npy" \
    --output "$work/ours_$p.npy" --device cuda:0 --precision "$p" >>"$out/infer.log" 2>&1 \
    || { echo "FAILED: infer $p" >&2; tail -5 "$out/infer.log" >&2; failed+=("infer-$p"); }
done
step parity "$py" ops/gpu/timm_reference.py logits --weights "$w" --input "$fx/input.npy" \
  --cpu-logits "$fx/logits.npy" --ours-dir "$work"

# 2. A whole run on cuda:0 (coordinator + one local worker), full logits saved, vs timm end to end.
"$bin/tresnet-coordinator" run --model tresnet_m --weights "$w" --data "$work/images" \
  --format imagefolder --num-classes 1000 --local-workers 1 --devices cuda:0 --batch-size 16 \
  --shard-size 8 --save-logits fp32 --out "$work/run" >"$out/run.log" 2>&1 \
  || { echo "FAILED: run" >&2; tail -20 "$out/run.log" >&2; failed+=("run"); }
cp "$work/run/summary.json" "$out/run-summary.json" 2>/dev/null
step dataset "$py" ops/gpu/timm_reference.py dataset --weights "$w" --run "$work/run" --images "$work/images"

# 2b. The same job in --counts-only mode: counts reduced on the GPU (through NCCL), same numbers.
"$bin/tresnet-coordinator" run --model tresnet_m --weights "$w" --data "$work/images" \
  --format imagefolder --num-classes 1000 --local-workers 1 --devices cuda:0 --batch-size 16 \
  --shard-size 8 --counts-only --out "$work/run-counts" >"$out/run-counts.log" 2>&1 \
  || { echo "FAILED: counts-only run" >&2; tail -20 "$out/run-counts.log" >&2; failed+=("run-counts"); }
step counts-only "$py" ops/gpu/timm_reference.py summaries --run "$work/run" --counts-run "$work/run-counts"

# 3. NCCL: barrier, count all-reduce (1000x1000 int64), float all-reduce and gather, every element checked.
step collective "$bin/tresnet-worker" collective-check --devices cuda:0 --backend nccl --rounds 20

# 4. Throughput: ours (BN folded, and not folded as timm runs it) vs timm, channels-last.
step bench-ours-nofold-fp16-224 "$bin/tresnet-worker" bench --model tresnet_m --weights "$w" \
  --devices cuda:0 --precision fp16 --resolution 224 --batch-size 256 --seconds "$secs" --no-fold-bn
for cfg in "fp16 224 256" "bf16 224 256" "fp32 224 256" "fp16 448 64"; do
  set -- $cfg
  step "bench-ours-$1-$2" "$bin/tresnet-worker" bench --model tresnet_m --weights "$w" --devices cuda:0 \
    --precision "$1" --resolution "$2" --batch-size "$3" --seconds "$secs"
  step "bench-timm-$1-$2" "$py" ops/gpu/timm_reference.py bench --weights "$w" --precision "$1" \
    --resolution "$2" --batch-size "$3" --seconds "$secs"
done

# 5. Every figure against its bound (ops/gpu/bounds.py prints each beside its bound; tested on canned
# figures by tests/tests/gpu_bounds.rs).
"$py" ops/gpu/bounds.py "$out" | tee "$out/bounds.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=("bounds")

rm -rf "$work"
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu check: FAILED steps: ${failed[*]}"
  exit 1
fi
echo "gpu check: all steps passed"
