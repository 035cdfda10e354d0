# diffrepro: the two commands that matter are `make repro` and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test repro bench sweep-table lint browser clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) browser

# Debian's chromium for the leaderboard browser test (tests/test_browser.py). Under CI (CI=true) that test
# is required, so a chromium that cannot be installed (apt-get, as root) fails here; elsewhere the test
# is skipped with the reason.
export CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && apt-get update -qq && apt-get install -y -qq chromium >/dev/null \
	  && [ -x "$(CHROMIUM)" ]; then exit 0; fi; \
	case "$${CI:-}" in 1|true|TRUE|True|yes|YES) \
	  echo "error: chromium could not be installed at $(CHROMIUM) (apt-get install chromium, as root): the browser test is required in CI" >&2; \
	  exit 1;; esac; \
	echo "chromium not installed: the browser test will be skipped (it is required when CI=true)"

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# The default replication: PoM with the attention reference it compares against (pulled in from
# papers/dit), then the leaderboard page.
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro papers/pom/dvc.yaml

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro dvc.yaml:bench papers/pom/dvc.yaml:bench

# The reference-recipe sweep's table (papers/dit/sweep/README.md) from `dvc exp show` (read-only), then the
# leaderboard page that shows it.
sweep-table: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipelines.sweep --out papers/dit/results/sweep.json
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipelines.leaderboard --papers papers --out leaderboard

lint: $(STAMP)
	$(BIN)/ruff check common papers pipelines tests notebooks

clean:
	rm -rf $(VENV)
