# The two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision pins: the newest pair this machine's pip allows (its cap is torch 2.14.1).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test setup clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[test,ray]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/karl complexity examples/ --eps 0.03 --eps 0.05 --eps 0.09 --baselines \
		--csv demo-out/complexity.csv --plot demo-out/kc_hist.png

test: setup
	$(VENV)/bin/python -m pytest

clean:
	rm -rf demo-out .pytest_cache
