#!/bin/bash
# The real-network CPU check: each optimizer at the study's ideal_lr (train.py) and the grid
# rates either side, one lr_valley run (its own resumable workdir) per entry, in turn.
#   experiments/mack2018/cpu/real_network.sh RUNS_DIR [ENTRY ...]
# An entry is an optimizer (its three rates around ideal_lr) or OPTIMIZER-SUFFIX: the follow-up runs that
# extend the grid where the best of the three lay at its edge, or a longer budget where all three missed.
set -e
runs=${1:?give the folder of the workdirs}; shift
declare -A RATES=(
  [adam]=0.001,0.0014678,0.00215443 [rmsprop]=0.001,0.0014678,0.00215443
  [sgd]=0.14678,0.215443,0.316228 [momentum]=0.14678,0.215443,0.316228
  [adagrad]=0.0681292,0.1,0.14678 [adadelta]=2.15443,3.16228,4.64159
  [momentum-below]=0.0464159,0.0681292,0.1 [sgd-above]=0.464159,0.681292
  [adadelta-above]=6.81292,10 [adagrad-2000]=0.0681292,0.1,0.14678
  [rmsprop-4000]=0.0014678,0.00215443,0.00316228,0.00464159 [rmsprop-above]=0.00681292,0.01
)
declare -A EXTRA=([adagrad-2000]=--max_steps=2000 [rmsprop-4000]=--max_steps=4000 [rmsprop-above]=--max_steps=4000)
for entry in ${@:-adam sgd momentum rmsprop adagrad adadelta}; do
  rates=${RATES[$entry]:?unknown entry $entry}
  python -m lrlab.experiments.lr_valley --flagfile=experiments/mack2018/cpu/real_network.flags \
    --optimizer="${entry%%-*}" --lrs="$rates" --workdir="$runs/$entry" --noprogress ${EXTRA[$entry]:-}
done
