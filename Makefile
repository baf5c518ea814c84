# The two quick-start commands: `make demo` and `make test`. Both create ./.venv as needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch; GPU users: install your CUDA torch into .venv first, then `make install`.
TORCH := torch==2.13.0

.PHONY: install dev demo ui screenshots browser test test-fast lint bench zoo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

$(VENV)/.ui: $(VENV)/.installed
	$(BIN)/pip install -q -e ".[ui]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

DEMO_PROMPTS := "red apple" "grinning face" "red heart" "dog face" "cat face" "sun with face" \
	"fire" "thumbs up"

# The main job, on the bundled models: a grid of emoji prompts (demo/emoji-grid.png), and
# two experts from different latent spaces, each with its own ControlNet, in one loop.
demo: install
	$(BIN)/pangu-draw generate $(DEMO_PROMPTS) --num-images 4 --seed 0 --grid -o demo/emoji.png
	$(BIN)/pangu-draw coop examples/zoo_multicontrol.toml -o demo/multicontrol.png

# The web UI on the bundled models at http://127.0.0.1:7860 (pangu-draw ui --help).
ui: $(VENV)/.ui
	$(BIN)/pangu-draw ui

# Debian's chromium for the browser test (skipped where it cannot be installed).
browser:
	bash scripts/install_browser.sh

# The README's screenshots of the UI, made by the browser test.
screenshots: dev browser
	PANGU_DRAW_SCREENSHOTS=docs/ui $(BIN)/pytest tests/test_browser.py

test: dev browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# Everything but the subprocess-heavy tests (marked slow): a quick local check.
test-fast: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench_time_decoupled.py

zoo: install
	bash scripts/train_zoo.sh

clean:
	rm -rf $(VENV) demo
