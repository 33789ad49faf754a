# Two commands: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv and install everything on a fresh machine first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Nothing may be downloaded from a model hub here: libraries that try (laion-clap fetches
# tokenizers when imported) must fail fast instead of hanging.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install test demo bench clean

install: $(VENV)/.installed

# torch and torchvision first, pinned: these wheels are on the local pip cache, and asking
# for them by range would let pip choose a multi-GB download instead.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0 -e '.[dev]'
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	@test -f recipes/quickstart.yaml || { \
	  echo "make demo: the main job needs recipes/quickstart.yaml and the model plugins it names"; \
	  echo "(KL-VAE, T5, 2-D U-Net, DDIM, Griffin-Lim); they are not part of tta yet."; \
	  echo "Available now: $(VENV)/bin/tta-run plugins, tta-run RECIPE show|validate, make test."; \
	  exit 1; }
	$(VENV)/bin/tta-run recipes/quickstart.yaml demo

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info
