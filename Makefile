# VisionThink Studio. `make run` starts the app; `make test` runs the whole suite. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test install install-dev install-gpu install-train-gpu test-train-env system-test-deps tiny-model \
	screenshot bench retrain miniature miniature-ablations demo-loop clean

# torch is installed on its own first so that pip takes the pinned build (the local CPU wheel here, CUDA on a
# GPU host) before anything else can ask for a different one. No eager upgrades.
$(VENV)/.runtime-installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime-installed

install-dev: $(VENV)/.dev-installed

# --- CUDA hosts (untested here: no GPU). flash-attn's setup.py imports torch to build, so it cannot build under
# pip's build isolation ("No module named 'torch'"): torch goes in first, then flash-attn with
# --no-build-isolation and its build tools already installed. Its setup.py first tries a prebuilt wheel for this
# torch/CUDA/Python from the project's releases and compiles otherwise (MAX_JOBS bounds the parallel jobs, about
# 9 GB of memory each). Either way it needs a CUDA build of torch and the CUDA toolkit (nvcc, or CUDA_HOME).
FLASH_ATTN_BUILD_DEPS := setuptools packaging psutil ninja==1.13.2 wheel==0.48.0
CUDA_CHECK := import sys, torch; from torch.utils.cpp_extension import CUDA_HOME; \
	sys.exit(None if torch.version.cuda and CUDA_HOME else \
	f"flash-attn needs a CUDA build of torch and the CUDA toolkit; here torch is {torch.__version__} and CUDA_HOME is \
	{CUDA_HOME}. Install nvcc (or set CUDA_HOME), and take torch 2.13.0 from an index whose build has CUDA.")

# FlashAttention-2 in the app's environment (serving; optional: sdpa is used without it).
install-gpu: install
	$(PY) -c '$(CUDA_CHECK)'
	$(PIP) install -q $(FLASH_ATTN_BUILD_DEPS)
	$(PIP) install --no-build-isolation -r requirements-gpu.txt

# The vLLM training environment (efficient-7b.yaml): vLLM 0.31 needs transformers < 5.18, so it is its own venv.
TRAIN_VENV ?= .venv-train
TRAIN_PIP := $(TRAIN_VENV)/bin/python -m pip --disable-pip-version-check

$(TRAIN_VENV)/.installed: requirements-train-gpu.txt requirements-gpu.txt
	test -x $(TRAIN_VENV)/bin/python || $(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_PIP) install -q torch==2.13.0
	$(TRAIN_VENV)/bin/python -c '$(CUDA_CHECK)'
	$(TRAIN_PIP) install -q -r requirements-train-gpu.txt
	$(TRAIN_PIP) install -q $(FLASH_ATTN_BUILD_DEPS)
	$(TRAIN_PIP) install --no-build-isolation -r requirements-gpu.txt
	touch $@

install-train-gpu: $(TRAIN_VENV)/.installed

# The training tests under the training environment's pins (transformers 5.17 …) on CPU, so that a version skew
# between it and the app's environment fails here rather than on the GPUs: requirements-train-gpu.txt without its
# GPU-only packages (vLLM, DeepSpeed, flash-attn), the CPU build of torch 2.13.0 (the same one `make install` takes)
# and the test pins without the browser. Refuses to go on if pip would take a CUDA torch.
TRAIN_CPU_VENV ?= .venv-train-cpu
TRAIN_CPU_PY := $(TRAIN_CPU_VENV)/bin/python
TRAIN_CPU_PIP := $(TRAIN_CPU_PY) -m pip --disable-pip-version-check
TRAIN_GPU_ONLY := vllm|deepspeed|flash-attn|playwright
# The tests that drive TRL, transformers' Trainer and the processors (those present; a missing file is left out).
TRAIN_ENV_TESTS ?= $(wildcard tests/train/test_grpo*.py tests/train/test_recipes.py tests/train/test_tracking.py \
	tests/train/test_rewards.py tests/train/test_bad_tool_calls.py tests/train/test_data_images.py \
	tests/train/test_train_setup.py)
CPU_TORCH_CHECK := import json, sys; meta = [i["metadata"] for i in json.load(open(sys.argv[1]))["install"]]; \
	bad = ["%s %s" % (m["name"], m["version"]) for m in meta \
	       if m["name"].startswith(("nvidia", "cuda")) or (m["name"] == "torch" and "+cpu" not in m["version"])]; \
	sys.exit("pip would install a CUDA torch here (%s); this environment takes the CPU build only: \
	give pip one, e.g. with PIP_FIND_LINKS." % ", ".join(bad) \
	         if bad else None)

$(TRAIN_CPU_VENV)/.installed: requirements-train-gpu.txt requirements-dev.txt
	test -x $(TRAIN_CPU_PY) || $(PYTHON) -m venv $(TRAIN_CPU_VENV)
	$(TRAIN_CPU_PIP) install -q --dry-run --report $(TRAIN_CPU_VENV)/torch-plan.json torch==2.13.0
	$(TRAIN_CPU_PY) -c '$(CPU_TORCH_CHECK)' $(TRAIN_CPU_VENV)/torch-plan.json
	$(TRAIN_CPU_PIP) install -q torch==2.13.0
	grep -hvE '^($(TRAIN_GPU_ONLY))[=<>~ ]' requirements-train-gpu.txt requirements-dev.txt \
		> $(TRAIN_CPU_VENV)/requirements.txt
	$(TRAIN_CPU_PIP) install -q -r $(TRAIN_CPU_VENV)/requirements.txt
	$(TRAIN_CPU_PY) -c 'import torch, sys; sys.exit(f"torch {torch.__version__} has CUDA" if torch.version.cuda else None)'
	touch $@

test-train-env: $(TRAIN_CPU_VENV)/.installed
	$(TRAIN_CPU_PY) -m pip list --format=freeze | grep -iE '^(torch|transformers|trl|accelerate|peft|datasets)=='
	$(TRAIN_CPU_PY) -m pytest -p no:cacheprovider $(TRAIN_ENV_TESTS) $(PYTEST_ARGS)

# Debian's chromium for the browser tests (playwright drives it; it never downloads a browser of its own) and
# Debian's PostgreSQL server for the store tests (they start a throwaway cluster unless VISIONTHINK_TEST_PG_URL is
# set). Each is installed only when missing.
system-test-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="chromium fonts-dejavu-core fonts-noto-color-emoji"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

run: install
	$(PY) app.py

test: install-dev system-test-deps
	$(PY) -m pytest $(PYTEST_ARGS)

tiny-model: install
	$(PY) -m visionthink.tiny --out $(or $(OUT),$(HOME)/.cache/visionthink/tiny-qwen2.5-vl)

screenshot: install-dev system-test-deps
	$(PY) -m tests.app.screenshot docs/screenshot.png docs/compare.png

bench: install-dev system-test-deps
	$(PY) -m bench.store_bench --write
	$(PY) -m bench.grpo_bench --write
	$(PY) -m bench.miniature_bench --write
	$(PY) -m bench.eval_throughput --write
	$(PY) -m bench.engine --write

# Retrain from the collected ratings (LoRA on one GPU by default); ARGS="--recipe … -- --field value" to change it.
retrain: install
	$(PY) -m train.retrain $(ARGS)

# Rebuild the embedded miniature from nothing (sample, SFT, GRPO, evaluate; about 30 minutes on 2 cores) and install
# it in visionthink/miniature/weights/ with its model card. CI does not run it; its tests check the result.
miniature: install
	$(PY) -m train.miniature build --out runs/miniature

# GRPO from the same start with each penalty variant (needs `make miniature` first): docs/miniature-ablations.*
miniature-ablations: install
	$(PY) -m train.miniature ablations --out runs/miniature

# The feedback loop on the miniature: serve the start, ask, annotate, retrain, serve the new version, compare.
demo-loop: install
	$(PY) -m train.demo_loop --out runs/demo-loop

clean:
	rm -rf $(VENV) $(TRAIN_CPU_VENV) .pytest_cache
