#!/usr/bin/env bash
# vidtrain vs PyTorch on one GPU, in one call: run from the repository root on the GPU machine,
# with the stripped CUDA binary at bench/gpu/bin/vidtrain (`cargo xtask bench gpu` builds it).
# Everything lands in $OUT (default bench-out/): nvidia-smi, both JSON files, logs, the kernel and
# autotune caches as cubecl-cache.tgz (put it in bench/gpu/bin/ to start a later run warm), and
# compare.txt, the ratio table.
# Each part has its own time limit, so a slow part cannot eat the whole lease:
#   T_PROBE (default 60 s)   one tiny row with cold caches: where the first step's time goes
#   T_OURS  (default 120 s)  vidtrain bench-model, each model's rows (ViViT's, then the seed
#                            transformer's), this long for each
#   T_TORCH (default 90 s)   bench/pytorch_reference.py, the same rows (+ Lightning if installed)
#   T_PROFILE (default 60 s) one row again with warm caches and CubeCL's per-kernel timing:
#                            profile-summary.txt, GPU time per kernel name (PROFILE_ROW, default
#                            "fp32 b4" of the seed transformer)
# PROBE=0, TORCH=0 or PROFILE=0 skip a part (a second run in one lease: the PyTorch side of the
# first one still stands). All parts together end within 9 minutes (the device tool allows 10
# a command). CUBECL_AUTOTUNE_LEVEL=minimal did not shorten the first step on the H200.
set -u
OUT=${OUT:-bench-out}
BIN=${VIDTRAIN_BIN:-bench/gpu/bin/vidtrain}
mkdir -p "$OUT/cache"
stamp() { date -u +%H:%M:%S; }
echo "$(stamp) start" | tee "$OUT/timeline.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >> "$OUT/nvidia-smi.txt"
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' \
  > "$OUT/torch.txt" 2>&1

# CubeCL compiles its kernels at run time with NVRTC: it needs libnvrtc on the loader path and the
# CUDA headers under $CUDA_PATH/include (default /usr/local/cuda). Find both where the machine has
# them (a toolkit, or PyTorch's nvidia-* wheels) and record what was found.
{
  echo "nvcc: $(command -v nvcc || echo none)"
  if [ -z "${CUDA_PATH:-}" ]; then
    for root in /usr/local/cuda /opt/cuda "$(dirname "$(dirname "$(command -v nvcc || echo /none/bin/nvcc)")")"; do
      if [ -f "$root/include/cuda_fp16.h" ]; then export CUDA_PATH=$root; break; fi
    done
  fi
  echo "CUDA_PATH=${CUDA_PATH:-unset}"
  if ! ldconfig -p | grep -q 'libnvrtc\.so'; then
    nvrtc=$( { ls "${CUDA_PATH:-/usr/local/cuda}"/lib64/libnvrtc.so* 2>/dev/null;
               python3 -c 'import nvidia, glob, os; [print(f) for p in nvidia.__path__ for f in glob.glob(os.path.join(p, "**", "libnvrtc.so*"), recursive=True)]' 2>/dev/null; } | head -1)
    if [ -n "$nvrtc" ]; then export LD_LIBRARY_PATH="$(dirname "$nvrtc")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
  fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-unset}"
  ldconfig -p | grep -E 'libnvrtc|libcuda\.so' || true
} > "$OUT/cuda-env.txt" 2>&1
cat "$OUT/cuda-env.txt"
# CubeCL reads cubecl.toml from the working directory: keep compiled kernels and autotune results
# in $OUT so that they come back and a later run can start warm.
# A cache brought back from an earlier run (bench/gpu/bin/cubecl-cache.tgz, carried with the
# binary) starts this one warm.
if [ -f bench/gpu/bin/cubecl-cache.tgz ]; then
  tar -xzf bench/gpu/bin/cubecl-cache.tgz -C "$OUT" && echo "warm start: kernel and autotune caches unpacked"
fi
cat > cubecl.toml <<TOML
[compilation]
cache = { file = "$OUT/cache/kernels" }

[autotune]
cache = { file = "$OUT/cache/autotune" }
TOML

if [ "${PROBE:-1}" != 0 ]; then
echo "$(stamp) probe: one tiny row, cold" | tee -a "$OUT/timeline.txt"
# CUBECL_DEBUG_LOG logs every kernel compilation and autotune run with its time.
CUBECL_DEBUG_LOG="$OUT/cubecl-probe.log" timeout "${T_PROBE:-60}" "$BIN" bench-model --tiny --backbone vivit --rows "fp32 b4" \
  --warmup 1 --steps 3 --out "$OUT/probe.json" trainer.accelerator=cuda \
  > "$OUT/probe.log" 2>&1
status=$?  # (read before $(stamp), which resets $?)
echo "$(stamp) probe exit $status" | tee -a "$OUT/timeline.txt"
fi

# One process and one time limit per model, ViViT first: on the first H200 run the seed
# transformer's first row (its stem's convolutions compiled and tuned) used the whole limit and
# no ViViT row ran.
case "${BACKBONE:-both}" in both) models="vivit transformer" ;; *) models=$BACKBONE ;; esac
for model in $models; do
  echo "$(stamp) vidtrain bench-model $model" | tee -a "$OUT/timeline.txt"
  timeout "${T_OURS:-120}" "$BIN" bench-model --backbone "$model" \
    --warmup "${WARMUP:-3}" --steps "${STEPS:-10}" --out "$OUT/ours-$model.json" \
    trainer.accelerator=cuda 2>&1 | tee "$OUT/ours-$model.log"
  status=${PIPESTATUS[0]}
  echo "$(stamp) vidtrain $model exit $status" | tee -a "$OUT/timeline.txt"
done
# The rows every model finished, in one file for compare.py.
python3 - "$OUT" $models <<'PY'
import json, sys
out, rows = sys.argv[1], []
for model in sys.argv[2:]:
    try:
        rows += json.load(open(f"{out}/ours-{model}.json"))
    except (OSError, ValueError):
        pass
json.dump(rows, open(f"{out}/ours.json", "w"), indent=2)
PY

if [ "${TORCH:-1}" != 0 ]; then
echo "$(stamp) pytorch reference" | tee -a "$OUT/timeline.txt"
timeout "${T_TORCH:-90}" python3 bench/pytorch_reference.py --backbone "${BACKBONE:-both}" \
  --warmup "${WARMUP:-3}" --steps "${STEPS:-10}" --lightning --out "$OUT/pytorch.json" \
  2>&1 | tee "$OUT/pytorch.log"
status=${PIPESTATUS[0]}
echo "$(stamp) pytorch exit $status" | tee -a "$OUT/timeline.txt"
fi

if [ "${PROFILE:-1}" != 0 ]; then
  echo "$(stamp) profile: ${PROFILE_ROW:-fp32 b4}, warm caches, per-kernel GPU time" | tee -a "$OUT/timeline.txt"
  # The kernel and autotune caches above are warm now: this run times kernels, not compilers.
  # CubeCL's profiler synchronises around every kernel, so the step is slower than unprofiled;
  # the shares between kernels are what it is for.
  cat >> cubecl.toml <<TOML

[profiling]
logger = { level = "basic", file = "$OUT/profile.log" }
TOML
  timeout "${T_PROFILE:-60}" "$BIN" bench-model --backbone transformer --rows "${PROFILE_ROW:-fp32 b4}" \
    --exact --warmup 1 --steps 3 --out "$OUT/profile.json" trainer.accelerator=cuda \
    > "$OUT/profile-run.log" 2>&1
  status=$?
  echo "$(stamp) profile exit $status" | tee -a "$OUT/timeline.txt"
  python3 bench/gpu/kernel_profile.py "$OUT/profile.log" > "$OUT/profile-summary.txt" 2>&1
  head -25 "$OUT/profile-summary.txt"
fi

if command -v ffmpeg > /dev/null; then
  echo "$(stamp) full pipeline: demo data, bf16 b1x4" | tee -a "$OUT/timeline.txt"
  timeout "${T_PIPELINE:-60}" "$BIN" train train.max_steps=20 trainer.precision=bf16 data.batch_size=1 \
    train.accumulate_grad_batches=4 trainer.accelerator=cuda paths.run_dir="$OUT/runs" \
    > "$OUT/pipeline.log" 2>&1
  status=$?
  echo "$(stamp) pipeline exit $status" | tee -a "$OUT/timeline.txt"
else
  echo "full pipeline row skipped: no ffmpeg on this machine" | tee -a "$OUT/timeline.txt"
fi

rm -f cubecl.toml
# The caches sit too deep to come back from the GPU machine as they are: one archive does. Put it
# at bench/gpu/bin/cubecl-cache.tgz to start the next run warm.
tar -czf "$OUT/cubecl-cache.tgz" -C "$OUT" cache && rm -rf "$OUT/cache"
# At most 8 files come back from the GPU machine: the tables and the JSON stay files, every log
# travels in logs.tgz (not the pipeline run directory: its checkpoints would outgrow 16 MiB).
keep="compare.txt timeline.txt ours.json pytorch.json profile-summary.txt cubecl-cache.tgz"
(cd "$OUT" && tar -czf logs.tgz --exclude=logs.tgz --exclude=cubecl-cache.tgz --exclude=runs -- * &&
  for file in *; do case " $keep logs.tgz " in *" $file "*) ;; *) rm -rf -- "$file" ;; esac; done)
python3 bench/gpu/compare.py "$OUT/ours.json" "$OUT/pytorch.json" | tee "$OUT/compare.txt"
