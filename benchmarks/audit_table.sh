#!/usr/bin/env bash
# The audit table of benchmarks/RESULTS.md: RS and MI at several patch sizes on the bundled photos
# (18 images, 16 attacked per configuration). About 80 s on the 2-core developer machine.
set -e
rm -rf /tmp/aud && mkdir -p /tmp/aud
himr-pipe sample-data /tmp/aud/src --per-class 3 --seed 7 > /dev/null
for cfg in "rs 8 png 0 0" "rs 16 png 0 0" "rs 32 png 0 0" "rs 16 jpeg 0 0" "rs 32 jpeg 0 0" \
           "rs 16 png 1 0" "rs 16 png 2 0" "rs 16 png 0 0.25" "rs 32 png 2 0.25" \
           "mi 8 png 0 0" "mi 16 png 0 0" "mi 32 png 0 0"; do
  set -- $cfg
  o=/tmp/aud/$1_$2_$3_gap$4_drop$5
  himr-pipe encrypt-shards /tmp/aud/src $o --scheme $1 --patch $2 --format $3 --gap $4 --drop $5 --seed 1 \
    --state-dir $o.state --no-progress > /dev/null
  himr-pipe audit $o --plain /tmp/aud/src --report $o.rep --state-dir $o.state --samples 16 \
    | sed "s/^/$1 P=$2 $3 gap=$4 drop=$5: /"
done
