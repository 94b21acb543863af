# `make run`: set up, make the synthetic V4 twin, train the quickstart model (then its products).
# `make test`: set up and run the test suite. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export WANDB_MODE ?= offline

.PHONY: install run test cowley compare-twin compare-cowley clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

data/synthetic_v4.h5: experiments/twin.yaml | $(STAMP)
	$(BIN)/encoders prepare synthetic $@ --config experiments/twin.yaml

data/cowley2023_v4.h5: | $(STAMP)
	$(BIN)/encoders prepare cowley2023 ../shared/datasets/cowley2023_v4 $@

run: $(STAMP) data/synthetic_v4.h5
	$(BIN)/python train.py fit --config experiments/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -n 2 --dist loadfile  # one test file per worker: 2 cores, module fixtures built once

cowley: $(STAMP) data/cowley2023_v4.h5
	$(BIN)/python train.py fit --config experiments/cowley_attention.yaml
	$(BIN)/python train.py fit --config experiments/cowley_gaussian.yaml

# Architecture comparisons (encoders compare): GA vs EGG MEI transfer, accuracy, similarity; report in runs/<name>/report.md
compare-twin: $(STAMP) data/synthetic_v4.h5
	$(BIN)/encoders compare experiments/compare_twin.yaml

compare-cowley: $(STAMP) data/cowley2023_v4.h5
	$(BIN)/encoders compare experiments/compare_cowley.yaml

clean:
	rm -rf runs wandb lightning_logs data/*.h5
