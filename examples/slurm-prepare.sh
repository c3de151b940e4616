#!/bin/bash
# Prepare a new model for editguard on a Slurm cluster: the screen and the mining spread over a
# job array, then one job finishes (merges the shards' pieces, calibrates, prints the table).
#
#   MODEL=/path/to/model N=8 EDITGUARD_CACHE=/shared/editguard-cache bash examples/slurm-prepare.sh
#
# Run it on a login node: it submits itself three times, each part after the previous one
# succeeded (afterok). EDITGUARD_CACHE must be a folder every node sees (the pieces meet there).
# SIZES passes smaller sizes, e.g. SIZES="--screen-cases 2000 --mine-top 20 --mine-control 10".
#SBATCH --job-name=editguard-prepare
#SBATCH --time=04:00:00
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
set -euo pipefail
MODEL=${MODEL:?set MODEL to a model name, directory or hub id}
N=${N:-4}
SIZES=${SIZES:-}
export EDITGUARD_CACHE=${EDITGUARD_CACHE:?set EDITGUARD_CACHE to a folder on a shared filesystem}

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # One array task: its part of the screen; in the second array, its part of the mining.
  # editguard: per-task
  editguard prepare --model "$MODEL" --shard $((SLURM_ARRAY_TASK_ID+1))/$N $SIZES
  exit 0
fi
if [ "${1:-}" = finish ]; then
  # editguard: merge
  editguard prepare --model "$MODEL" --merge
  editguard prepare --model "$MODEL" $SIZES
  exit 0
fi
screen=$(sbatch --parsable --array=0-$((N-1)) --export=ALL "$0")
mine=$(sbatch --parsable --array=0-$((N-1)) --export=ALL --dependency=afterok:"$screen" "$0")
sbatch --export=ALL --dependency=afterok:"$mine" "$0" finish
