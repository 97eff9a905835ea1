# VisionThink Studio. `make run` starts the app; `make test` runs the whole suite. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: run test install install-dev system-test-deps tiny-model screenshot bench retrain miniature \
	miniature-ablations demo-loop clean

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
	rm -rf $(VENV) .pytest_cache
