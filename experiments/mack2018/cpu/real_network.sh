#!/bin/bash
# The real-network CPU check (issue 15): each optimizer at the study's ideal_lr (train.py) and the grid
# rates either side, one lr_valley run (its own resumable workdir) per optimizer, in turn.
#   experiments/mack2018/cpu/real_network.sh RUNS_DIR [OPTIMIZER ...]
set -e
runs=${1:?give the folder of the workdirs}; shift
declare -A RATES=(
  [adam]=0.001,0.0014678,0.00215443 [rmsprop]=0.001,0.0014678,0.00215443
  [sgd]=0.14678,0.215443,0.316228 [momentum]=0.14678,0.215443,0.316228
  [adagrad]=0.0681292,0.1,0.14678 [adadelta]=2.15443,3.16228,4.64159
)
for opt in "${@:-adam sgd momentum rmsprop adagrad adadelta}"; do
  for o in $opt; do
    python -m lrlab.experiments.lr_valley --flagfile=experiments/mack2018/cpu/real_network.flags \
      --optimizer="$o" --lrs="${RATES[$o]}" --workdir="$runs/$o" --noprogress
  done
done
