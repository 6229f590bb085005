#!/usr/bin/env bash
# Multi-process run on one machine (one process per device group), e.g. to test multi-host code paths:
#   launch/local.sh 2 python -m ear_teacher.main --config configs/ear_teacher/default.py:smoke --workdir /tmp/w
# Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which
# common.parallel.maybe_initialize_distributed turns into jax.distributed.initialize() (gloo on CPU).
# Per-process devices: on CPU each process has 1 device unless JAX_NUM_CPU_DEVICES is set; on a GPU box set
# CUDA_VISIBLE_DEVICES per process yourself or use launch/slurm.sbatch.
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: $0 NUM_PROCESSES COMMAND..." >&2; exit 2; fi
n=$1; shift
port=${JAX_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
