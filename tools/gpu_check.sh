#!/usr/bin/env bash
# The GPU path, checked in one go on a CUDA machine (about 10 minutes):
#   1. the gpu-marked tests (bf16/fp16 autocast, channels-last, CUDA sampling),
#   2. one training-throughput comparison on the same run: fp32 eager vs bf16 + channels-last + torch.compile,
#   3. every chapter notebook in full mode, executed into a temporary copy (committed notebooks untouched),
# then a summary: each part PASS / FAIL / TIMEOUT / SKIP with its time. A failing part does not stop the others;
# the exit status is non-zero if any part failed.
#
#   tools/gpu_check.sh                  # everything
#   GPU_CHECK_PARTS="tests bench" tools/gpu_check.sh
#   GPU_CHECK_NB_TIMEOUT=120 tools/gpu_check.sh   # seconds per notebook (default 100)
#
# Time: each part has its own limit, and all of them share one deadline (GPU_CHECK_TOTAL, default 570 s), so the
# script ends within 10 minutes whatever hangs; a part that no longer fits is reported as SKIP (no time left).
#
# Logs of every part are kept in $GPU_CHECK_OUT (default: a fresh temporary folder, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS="${GPU_CHECK_PARTS:-tests bench notebooks}"
OUT="${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}"
TESTS_TIMEOUT="${GPU_CHECK_TESTS_TIMEOUT:-120}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-150}"
NB_TIMEOUT="${GPU_CHECK_NB_TIMEOUT:-100}"
TOTAL="${GPU_CHECK_TOTAL:-570}"
DEADLINE=$(( $(date +%s) + TOTAL ))
PY="${PYTHON:-python3}"
mkdir -p "$OUT"

declare -a SUMMARY=()
FAILED=0

# run_part NAME TIMEOUT_S COMMAND...: runs with a time limit, logs to $OUT/NAME.log, records the verdict.
run_part() {
  local name="$1" limit="$2"
  shift 2
  local log="$OUT/${name// /_}.log" start end rc verdict left
  start=$(date +%s)
  left=$(( DEADLINE - start ))
  if (( left < 20 )); then
    skip_part "$name" "no time left in the ${TOTAL} s budget"
    FAILED=1
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "=== ${name} (limit ${limit} s) ==="
  set +e
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  set -e
  end=$(date +%s)
  case "$rc" in
    0) verdict="PASS" ;;
    124|137) verdict="TIMEOUT"; FAILED=1 ;;
    *) verdict="FAIL (exit ${rc})"; FAILED=1 ;;
  esac
  tail -n 3 "$log" | sed 's/^/    /'
  SUMMARY+=("$(printf '%-34s %-16s %5d s   %s' "$name" "$verdict" "$((end - start))" "$log")")
}

skip_part() {
  SUMMARY+=("$(printf '%-34s %-16s %5s     %s' "$1" "SKIP" "-" "$2")")
}

# ------------------------------------------------------------------------------------------- preflight
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: torch sees no CUDA device here; nothing to check (run it on a CUDA machine)." >&2
  exit 2
fi
"$PY" - <<'EOF' >"$OUT/device.txt" 2>&1 || echo "device: (could not query the GPU's properties)" >"$OUT/device.txt"
import torch
p = torch.cuda.get_device_properties(0)
print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
      f"bf16: {torch.cuda.is_bf16_supported()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
cat "$OUT/device.txt"
unset DIFFUSION_COURSE_QUICK  # full mode for the notebooks; the tests set quick mode themselves where needed
export DIFFUSION_COURSE_DEVICE=cuda

# ------------------------------------------------------------------------------------------- 1. gpu tests
if [[ " $PARTS " == *" tests "* ]]; then
  # only the tests marked gpu, in the unit tests (addopts cleared: no nbval over the notebooks here)
  run_part "gpu-marked tests" "$TESTS_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests -o addopts=""
else
  skip_part "gpu-marked tests" "not in GPU_CHECK_PARTS"
fi

# ------------------------------------------------------------------------------------------- 2. throughput
if [[ " $PARTS " == *" bench "* ]]; then
  cat >"$OUT/throughput.py" <<'EOF'
"""Training throughput of the fmnist-ddpm recipe's U-Net on one GPU: fp32 eager vs bf16 + channels-last + compile.

Same model, data, batch, seed and number of steps in both settings; steps/s after a warm-up (which includes
torch.compile's compilation, reported separately). Also the loss after the run, so a speed path that breaks
training shows up.
"""
import json, sys, time
import torch
from diffusion_course import pretrained
from diffusion_course.data import load_fashion_mnist
from diffusion_course.training import TrainConfig, train

torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
torch.backends.cudnn.allow_tf32 = False
x, y = load_fashion_mnist("train")
recipe = pretrained.RECIPES["fmnist-ddpm"]
base = {k: v for k, v in recipe.train.items() if k not in ("steps", "lr_cycle_ends", "checkpoint_path")}
results = {}
for name, kw in (("fp32 eager", dict(amp=False, channels_last=False, compile=False)),
                 ("bf16 + channels-last + compile", dict(amp=True, channels_last=True, compile=True))):
    times = {}
    for steps in (30, 230):  # the difference cancels start-up and compilation
        torch.manual_seed(0)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = train(pretrained.build("fmnist-ddpm"), pretrained.schedule_for("fmnist-ddpm"), x, y,
                    TrainConfig(**{**base, **kw, "steps": steps}), progress=False, device="cuda")
        torch.cuda.synchronize()
        times[steps] = time.perf_counter() - t0
    rate = 200 / (times[230] - times[30])
    results[name] = {"steps_per_s": rate, "images_per_s": rate * base["batch_size"],
                     "startup_s": times[30] - 30 / rate, "final_loss": sum(res.history.loss[-50:]) / 50}
    print(f"{name:32s} {rate:7.1f} steps/s  {rate * base['batch_size']:8.0f} img/s  "
          f"start-up {results[name]['startup_s']:.1f} s  loss(last 50) {results[name]['final_loss']:.4f}", flush=True)
a, b = results["fp32 eager"], results["bf16 + channels-last + compile"]
print(f"speed-up: {b['steps_per_s'] / a['steps_per_s']:.2f}x")
json.dump(results, open(sys.argv[1], "w"), indent=2)
if not abs(b["final_loss"] - a["final_loss"]) < 0.25 * a["final_loss"]:
    sys.exit(f"the fast path's loss {b['final_loss']:.4f} is far from fp32's {a['final_loss']:.4f}")
EOF
  run_part "throughput fp32 vs bf16+cl+compile" "$BENCH_TIMEOUT" "$PY" "$OUT/throughput.py" "$OUT/throughput.json"
else
  skip_part "throughput fp32 vs bf16+cl+compile" "not in GPU_CHECK_PARTS"
fi

# ------------------------------------------------------------------------------------------- 3. notebooks
if [[ " $PARTS " == *" notebooks "* ]]; then
  # A temporary copy of the tree, so --execute writes its notebooks there and never over the committed ones;
  # data and checkpoints are linked, not copied.
  WORK="$OUT/tree"
  mkdir -p "$WORK"
  tar --exclude=./.git --exclude=./data --exclude=./notebooks/*.ipynb -cf - . | tar -xf - -C "$WORK"
  ln -sfn "$(pwd)/data" "$WORK/data"
  for src in notebooks/src/[0-9][0-9]_*.py; do
    stem="$(basename "$src" .py)"
    nn="${stem%%_*}"
    run_part "notebook ${stem}" "$NB_TIMEOUT" \
      bash -c "cd '$WORK' && PYTHONPATH='$WORK' '$PY' tools/nbbuild.py --execute '$nn'"
  done
else
  skip_part "notebooks (full mode)" "not in GPU_CHECK_PARTS"
fi

# ------------------------------------------------------------------------------------------- summary
echo
echo "================================ gpu_check summary ================================"
cat "$OUT/device.txt"
printf '%s\n' "${SUMMARY[@]}"
if [[ -f "$OUT/throughput.json" ]]; then
  grep -h -E "steps/s|speed-up" "$OUT/throughput_fp32_vs_bf16+cl+compile.log" 2>/dev/null || true
fi
echo "logs: $OUT"
if [[ "$FAILED" -ne 0 ]]; then
  echo "gpu_check: some parts failed (see their logs)."
  exit 1
fi
echo "gpu_check: all parts passed."
