#!/usr/bin/env bash
# The wheels a lent GPU machine (Python 3.12, no network) lacks for the book: papermill and
# an IPython kernel to run the notebooks, datasets for the package, gguf for the offline
# target. Downloaded here into .device/wheels/ (ignored by git), installed there by
# tools/book_on_gpu.sh with --no-deps into /tmp/site.
#
# Only the packages the machine's image lacks are kept: a second copy of one it has
# (huggingface-hub, fsspec, numpy ...) would shadow the version its torch and transformers
# were installed with. KEEP is the difference, read from the image's package list (2026-11).
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP="asttokens comm datasets debugpy dill entrypoints executing fastjsonschema gguf httpcore2 httpx2
ipykernel ipython ipython-pygments-lexers jedi jsonschema jsonschema-specifications jupyter-client
jupyter-core matplotlib-inline multiprocess nbclient nbformat nest-asyncio2 papermill parso pexpect
platformdirs prompt-toolkit ptyprocess pure-eval pyzmq referencing rpds-py stack-data tenacity tornado
traitlets truststore tzdata wcwidth"
tmp=$(mktemp -d)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$tmp" "papermill>=2.6" ipykernel "nbformat>=5" "datasets>=3" "gguf>=0.10"
mkdir -p .device/wheels
rm -f .device/wheels/*.whl
for w in "$tmp"/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | tr '_.' '--' | tr 'A-Z' 'a-z')
  if [[ " $(echo $KEEP) " == *" $name "* ]]; then cp "$w" .device/wheels/; fi
done
rm -rf "$tmp"
echo "$(ls .device/wheels | wc -l) wheels, $(du -sh .device/wheels | cut -f1) in .device/wheels/"
