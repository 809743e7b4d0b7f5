#!/usr/bin/env bash
# Run a command beside a private CUDA MPS control daemon, so that the kernels of several GPU
# processes overlap instead of time-slicing (rank_fidelity.py --gpu-workers N):
#
#   bash benchmarks/with_mps.sh python benchmarks/rank_fidelity.py --ladder --device cuda \
#       --results ladder.jsonl --part gpu --gpu-workers 4
#
# The daemon's pipe and log directories live in a fresh temporary directory, so only the
# command's processes (which inherit CUDA_MPS_PIPE_DIRECTORY) talk to it; it is stopped when
# the command ends or the script is interrupted. Without nvidia-cuda-mps-control, or if the
# daemon does not start, the command runs without MPS (said on stderr). Exit status: the
# command's.
set -u
dir=$(mktemp -d "${TMPDIR:-/tmp}/archdisco-mps.XXXXXX")
export CUDA_MPS_PIPE_DIRECTORY="$dir/pipe" CUDA_MPS_LOG_DIRECTORY="$dir/log"
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
mps=0
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
    mps=1
    echo "with_mps: MPS daemon started ($dir)" >&2
else
    echo "with_mps: no MPS daemon (nvidia-cuda-mps-control missing or failed); the GPU time-slices between processes" >&2
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
fi
stop() {
    [ "$mps" = 1 ] && echo quit | nvidia-cuda-mps-control
    mps=0
    rm -rf "$dir"
}
"$@" &  # in the background, so that a signal to this script is handled at once
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child; stop; exit 143' TERM
trap 'kill -INT $child 2>/dev/null; wait $child; stop; exit 130' INT
wait $child
rc=$?
stop
exit $rc
