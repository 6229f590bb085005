#!/usr/bin/env bash
# Cloud TPU VM (all workers of a pod slice run the same command; jax auto-detects the topology):
#   launch/tpu_vm.sh TPU_NAME ZONE python -m ear_teacher.main --config configs/ear_teacher/default.py --workdir gs://bucket/ear
# The repo must already be at ~/jaxvision on every worker with `make install` done (the script's `setup`
# mode does that: launch/tpu_vm.sh TPU_NAME ZONE setup). JAX_DISTRIBUTED=1 makes the trainer call
# jax.distributed.initialize() with no arguments, which reads the TPU metadata.
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 TPU_NAME ZONE (setup | COMMAND...)" >&2; exit 2; fi
tpu=$1 zone=$2; shift 2
run() { gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"; }
if [ "$1" = setup ]; then
  gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all "$(pwd)" "$tpu":~/jaxvision
  run "cd ~/jaxvision && make install EXTRAS=tpu"
  exit 0
fi
printf -v cmd '%q ' "$@"
run "cd ~/jaxvision && JAX_DISTRIBUTED=1 .venv/bin/${cmd}"
