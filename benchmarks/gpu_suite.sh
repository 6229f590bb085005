#!/usr/bin/env bash
# Every benchmarks.run workload in float32 and bfloat16 on one GPU (H100 / H200), JAX against its PyTorch twin, in
# under 8 minutes; then one JSON and a markdown table (images/s, JAX/torch, MFU, peak memory, compile time).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR          # on the GPU machine, from a copy of the repository
#   bash benchmarks/gpu_suite.sh --fetch-wheels   # here, once: the wheels the GPU image lacks, into .whl/
#
# Writes OUT_DIR/<workload>_<dtype>.json per run (a failure record when a run left none), OUT_DIR/logs/*.log,
# OUT_DIR/environment.txt, and OUT_DIR/gpu_suite.{json,md} (python -m benchmarks.gpu_table OUT_DIR).
#
# What it installs. The GPU image is a stock CUDA JAX + torch one (jax[cuda], flax, optax, orbax-checkpoint, torch,
# timm and their dependencies); it has no network. What benchmarks.run, the trainers it builds the train steps
# from, and the torch twins import at import time, beyond that image, travels as wheels in .whl/ (carry it with the
# working tree) and goes to /tmp/site, put first on PYTHONPATH; a wheel whose distribution the image already has
# is left out, so nothing of the image is shadowed:
#   ml-collections                            configs, common.trainer, common.optim
#   grain, array-record, attrs, cloudpickle,  common.data / common.checkpoint / the subsystems' data (grain imports
#     portpicker, prometheus-client           array_record, attrs, cloudpickle, portpicker, prometheus_client)
#   scikit-learn, joblib, threadpoolctl,      distill.metrics (sklearn.metrics)
#     narwhals
#   matplotlib, cycler, fonttools,            common.plots, imported by distill.metrics (no plot is drawn)
#     kiwisolver, pyparsing, python-dateutil
#   transformers, tokenizers, regex           the torch twins of dinov2_forward and ear_vae_train (HF Dinov2Model);
#                                             without them those two record torch as skipped, JAX still runs
# Not needed at import time, so not carried: tensorflow-datasets, tensorboardX (training only), scikit-image,
# pytest (tests), contourpy (matplotlib contours), safetensors / huggingface-hub / pillow / pyyaml (the image's
# timm, torchvision and flax bring them). The repository itself is not installed: PYTHONPATH has its root.
#
# Time budget (estimates for an H100 host, not yet measured there). Every run is its own process: JAX's
# peak-memory counter only counts up, and one crash or hang stays one row. A run is ~6 s of imports and CUDA set-up,
# the workload's set-up (weights, data; the train workloads also save model directories and trace + compile the
# trainer's init), JAX lower + compile, 3 + 10 steps, torch's set-up, first call and 3 + 10 steps. Per run (float32
# and bfloat16 alike; the timeout is ~1.5x the estimate):
#   tiny_ladeda_forward, dsr_forward ~11 s (timeout 25); edgeface_embed, ladeda_forward, dinov2_forward ~16-19 s (30);
#   tiny_ladeda_distill_train ~30 s (50); ladeda_train ~33 s (60); facerec_contrastive_train ~45 s (75: tracing
#   EdgeFace twice and the trainer's init); ear_vae_train ~58 s (90: XLA compile of DINOv2 + VGG16 + decoder).
# That is ~150 s of forward and ~330 s of train runs plus ~10 s of wheel install: about 8 minutes, too close to
# promise. So no run starts with under 15 s left of SUITE_BUDGET_S (default 450) from the script's start, and each
# run's timeout is also capped at what is left: the suite ends within ~7.6 minutes whatever happens, and a run cut
# is a row saying so. Runs go cheapest workload first, float32 then bfloat16, so a cut loses the fewest rows
# (ear_vae_train's first). Each log (OUT_DIR/logs) has timestamped phase lines and each JSON setup_s / compile_s,
# which show where a real run's time went.
# float32 runs use --precision highest (true fp32 matmuls and convs in both frameworks, MFU against the fp32
# peak); bfloat16 runs --precision default (what stays float32 in a mixed-precision step may use TF32, in both
# frameworks; MFU against the bf16 peak). Batches: enough work per step to fill an H100 (0.8-5 TFLOP per train
# step, >= 0.1 TFLOP per forward), a float32 step at most ~0.2 s; XLA's memory analysis of the float32 JAX steps
# (compiled for CPU here) puts them at 1-4 GiB (forward) and 4-16.5 GiB (train; ear_vae_train 16.5,
# facerec_contrastive_train 15), so JAX's and torch's peaks together stay well inside an H100's 80 GB.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root

# name                        batch  budget_s   (tests/test_benchmarks.py checks the names against workloads.names())
WORKLOADS=(
  "tiny_ladeda_forward          512     25"
  "dsr_forward                  512     25"
  "edgeface_embed              1024     30"
  "ladeda_forward                64     30"
  "dinov2_forward               256     30"
  "tiny_ladeda_distill_train     64     50"
  "ladeda_train                  64     60"
  "facerec_contrastive_train    256     75"
  "ear_vae_train                 32     90"
)
DTYPES=(float32 bfloat16)
# Carried wheels: distributions, pinned by --fetch-wheels to the versions installed in .venv (see above).
WHEELS=(ml-collections grain array-record attrs cloudpickle portpicker prometheus-client scikit-learn joblib
        threadpoolctl narwhals matplotlib cycler fonttools kiwisolver pyparsing python-dateutil transformers
        tokenizers regex)

PYTHON=${PYTHON:-python3}
REPEATS=${REPEATS:-10}
WARMUP=${WARMUP:-3}
SUITE_BUDGET_S=${SUITE_BUDGET_S:-450}
EXTRA_ARGS=${EXTRA_ARGS:-}  # appended to every benchmarks.run call (a CPU dry run: "--device cpu --batch 2 --depth 1")
ONLY=${ONLY:-}  # a space-separated subset of the workloads (a rerun); empty: all
WHEEL_DIR=${WHEEL_DIR:-.whl}  # the carried wheels, if the folder exists

fetch_wheels() {
  local venv_python=${VENV_PYTHON:-.venv/bin/python}
  local pins
  pins=$("$venv_python" - "${WHEELS[@]}" <<'EOF'
import importlib.metadata as m, sys
print(" ".join(f"{name}=={m.version(name)}" for name in sys.argv[1:]))
EOF
)
  rm -rf .whl && mkdir -p .whl
  # shellcheck disable=SC2086
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins
  echo "wheels in .whl/ ($(du -sh .whl | cut -f1)): carry .whl with the working tree to the GPU machine"
  ls -1 .whl
}

install_wheels() {
  # Only the wheels whose distribution the image lacks: on PYTHONPATH, a carried copy of one it has would shadow
  # the image's own (built and pinned together with its jax and torch).
  local missing
  missing=$("$PYTHON" - "$WHEEL_DIR"/*.whl <<'EOF'
import importlib.metadata as m, os, sys
for path in sys.argv[1:]:
  dist = os.path.basename(path).split("-")[0]  # a wheel's name is normalised: scikit_learn-1.9.1-cp312-...
  try:
    print(f"image has {dist} {m.version(dist)}: its wheel is not installed", file=sys.stderr)
  except m.PackageNotFoundError:
    print(path)
EOF
)
  if [[ -n $missing ]] && "$PYTHON" -m pip --version > /dev/null 2>&1; then
    # shellcheck disable=SC2086
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $missing
  elif [[ -n $missing ]]; then  # an image without pip: these wheels need no more than unpacking
    # shellcheck disable=SC2086
    "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall("/tmp/site") for w in sys.argv[1:]]' $missing
  fi
  if [[ -n $missing ]]; then
    echo "installed into /tmp/site: $(echo "$missing" | xargs -n1 basename | sed 's/-.*//' | tr '\n' ' ')"
  fi
  export PYTHONPATH=/tmp/site:$PYTHONPATH
}

if [[ ${1:-} == --fetch-wheels ]]; then
  fetch_wheels
  exit 0
fi
if [[ $# -ne 1 || ${1:-} == -* ]]; then
  echo "usage: bash benchmarks/gpu_suite.sh OUT_DIR | --fetch-wheels" >&2
  exit 2
fi
mkdir -p "$1/logs"
OUT=$(cd "$1" && pwd)

export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G "$WHEEL_DIR/*.whl" > /dev/null; then
  install_wheels  # (a few seconds, counted in the suite's budget)
fi

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PYTHON" - <<'EOF'
import importlib.metadata as m, platform
print("python", platform.python_version())
for d in ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "torch",
          "transformers", "grain", "ml-collections", "numpy"):
  try:
    print(d, m.version(d))
  except m.PackageNotFoundError:
    pass
EOF
} 2>&1 | tee "$OUT/environment.txt"

for line in "${WORKLOADS[@]}"; do
  read -r name batch budget <<< "$line"
  if [[ -n $ONLY && " $ONLY " != *" $name "* ]]; then
    continue
  fi
  for dtype in "${DTYPES[@]}"; do
    json=$OUT/${name}_${dtype}.json log=$OUT/logs/${name}_${dtype}.log
    rm -f "$json"
    left=$((SUITE_BUDGET_S - SECONDS))  # SECONDS: since the script started
    if ((left < 15)); then
      echo "== $name $dtype: not run, ${SUITE_BUDGET_S} s suite budget spent"
      "$PYTHON" -m benchmarks.gpu_table --failure "$json" --workload "$name" --dtype "$dtype" --batch "$batch" \
        --reason "not run: the suite's ${SUITE_BUDGET_S} s budget was spent"
      continue
    fi
    limit=$((budget < left ? budget : left))
    precision=$([[ $dtype == float32 ]] && echo highest || echo default)
    echo "== $name $dtype batch $batch (timeout ${limit} s, ${SECONDS} s into the suite)"
    t0=$SECONDS
    rc=0
    # shellcheck disable=SC2086
    timeout -k 5 "$limit" "$PYTHON" -m benchmarks.run "$name" --dtype "$dtype" --precision "$precision" \
      --batch "$batch" --repeats "$REPEATS" --warmup "$WARMUP" $EXTRA_ARGS --out "$json" > "$log" 2>&1 || rc=$?
    grep -v -e "^WARNING" -e "^I0000" -e "^W0000" "$log" | tail -n 3 || true
    if ((rc != 0)) && [[ ! -s $json ]]; then  # no record of its own (a record with a failed framework is kept)
      reason="exit $rc"
      if ((rc == 124 || rc == 137)); then
        reason="timed out after ${limit} s"
      fi
      "$PYTHON" -m benchmarks.gpu_table --failure "$json" --workload "$name" --dtype "$dtype" --batch "$batch" \
        --reason "$reason" --log "$log"
    fi
    echo "   $((SECONDS - t0)) s, exit $rc"
  done
done
echo "suite: ${SECONDS} s"

"$PYTHON" -m benchmarks.gpu_table "$OUT"
