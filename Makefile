# `make run` and `make test` are the two commands; both (re)create .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench bench-full gpu-check pretrained docs venv clean

# The main job: train on the embedded synthetic data, then evaluate under every subset of modalities.
run: $(STAMP)
	$(BIN)/fusionzoo train configs/experiments/quickstart.yaml --overwrite
	$(BIN)/fusionzoo eval runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Quick benchmark suite (under 5 minutes on 2 CPU cores); results in benchmarks/results/<machine>/.
bench: $(STAMP)
	$(BIN)/fusionzoo bench --fusions '*' --batch-sizes 256 --modality-sweep 2,4,8 --missing-sweep 0,0.5 --min-time 0.2 --name quick_fusions
	$(BIN)/fusionzoo bench --encoders '*' --exclude 'hf_*,timm,open_clip_*' --batch-sizes 32 --min-time 0.2 --name quick_encoders
	$(BIN)/fusionzoo bench --encoders 'hf_*,timm,open_clip_*' --batch-sizes 4 --min-time 0.2 --name quick_foundation_encoders
	$(BIN)/fusionzoo bench --models configs/experiments/quickstart.yaml --batch-sizes 64 --min-time 0.5 --name quick_models
	$(BIN)/python benchmarks/loader_speed.py

# Everything: batch sweeps, torch.compile, all model configs; the GPU suite where CUDA is present.
bench-full: $(STAMP)
	$(BIN)/fusionzoo bench --fusions '*' --batch-sizes 32,64,128,256,512 --compile --modality-sweep 2,3,4,5,6,7,8 --missing-sweep 0,0.25,0.5,0.75 --min-time 1 --name full_fusions
	$(BIN)/fusionzoo bench --encoders '*' --batch-sizes 8,32,128 --compile --min-time 1 --name full_encoders
	$(BIN)/fusionzoo bench --models configs/experiments/quickstart.yaml configs/models/*.yaml --batch-sizes 64,256 --compile --min-time 1 --name full_models
	$(BIN)/python benchmarks/fusion_reference.py
	$(BIN)/python benchmarks/loader_speed.py
	$(BIN)/python benchmarks/latency.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/fusionzoo bench --device cuda --fusions '*' --encoders '*' --models configs/experiments/quickstart.yaml --batch-sizes 256,1024 --dtypes float32,bfloat16 --compile --channels-last --name gpu

# The device check on a GPU machine, with that machine's own Python (offline: nothing is installed;
# what is missing is named): GPU tests, CUDA benchmarks, training throughput, in under 8 minutes,
# into benchmarks/results/gpu-<device>/. Without CUDA it says so in one line.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py

# Train the shipped pretrained models again from their configs and rewrite fusionzoo/zoo/ (about 5 minutes).
pretrained: $(STAMP)
	$(BIN)/python benchmarks/make_pretrained.py

# The documentation site, built strictly (a broken link or a missing reference fails) into docs/site/.
docs: $(STAMP)
	cd docs && NO_MKDOCS_2_WARNING=1 ../$(BIN)/mkdocs build --strict

venv: $(STAMP)

# Re-install when the pinned sets or the package metadata change. Every optional extra whose tests
# exist is installed, and the docs requirements (the strict docs build is a test), so every test
# runs; `pip install fusionzoo` alone stays light.
$(STAMP): requirements/pinned.txt requirements/extras.txt requirements/docs.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements/pinned.txt -r requirements/extras.txt -r requirements/docs.txt
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test,bench,hf,timm,clip,export,track,tune,ray,slurm,data]"
	$(BIN)/python -m pip check
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache
