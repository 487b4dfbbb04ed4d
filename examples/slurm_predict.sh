#!/bin/bash
# msfer predict over a Slurm job array: task i of N takes the i-th of N interleaved shards of the inputs
# (msfer predict --num-shards N --shard-index i; the inputs are sorted, so every task sees the same split)
# and writes its own results file. A task that is requeued or resubmitted goes on where it stopped (--resume).
#
#   sbatch --array=0-15 examples/slurm_predict.sh /data/videos results/
#   python -c "import pandas, glob; pandas.concat(map(pandas.read_csv, sorted(glob.glob('results/part-*.csv')))).to_csv('all.csv', index=False)"
#
# MSFER_ARGS adds options to every task, e.g. MSFER_ARGS="--every 5 --weights model.onnx".
#SBATCH --job-name=msfer-predict
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=msfer-predict-%A_%a.log
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: sbatch --array=0-N examples/slurm_predict.sh INPUT OUT_FOLDER" >&2
  exit 2
fi
input=$1
out=$2
: "${SLURM_ARRAY_TASK_ID:?run this as a job array: sbatch --array=0-N ...}"
# tasks numbered 0..N-1 (--array=0-15): task i takes shard i of N
shards=${SLURM_ARRAY_TASK_COUNT:?run this as a job array: sbatch --array=0-N ...}
if [ "$SLURM_ARRAY_TASK_ID" -ge "$shards" ]; then
  echo "task $SLURM_ARRAY_TASK_ID of an array of $shards: number the tasks from 0 without gaps (--array=0-$((shards - 1)))" >&2
  exit 2
fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}  # one task's threads on the cores Slurm gave it

mkdir -p "$out"
# shellcheck disable=SC2086  # MSFER_ARGS is a list of options
msfer predict "$input" --num-shards "$shards" --shard-index "$SLURM_ARRAY_TASK_ID" \
  --out "$out/part-$SLURM_ARRAY_TASK_ID.csv" --resume ${MSFER_ARGS:-}
