# kpbench: `make bench SERVICES=50000` and `make test` are the two commands that matter.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
KPBENCH := $(VENV)/bin/kpbench
APT_PACKAGES := iptables nftables ipset ipvsadm user-mode-linux nginx-light kmod iproute2 conntrack procps
STAMP := $(VENV)/.installed

SCENARIO ?= default
SERVICES ?=
MODES ?=
REPS ?=
TARGET ?=
OUT ?=
KERNEL ?=
BUDGET ?=
PLAN_ONLY ?=
# the Kubernetes release: default the one kube/go.mod pins (harness/dataplane/versions.py's default)
KUBE_VERSION ?= $(shell awk '$$1 == "k8s.io/kubernetes" && $$2 ~ /^v/ {print $$2; exit}' kube/go.mod)

# `make bench` measures what the scenario says (default.yaml: the lab target, all three modes) whether
# or not `make kube` has run; TARGET=lab|local|cluster chooses another (README: "What make bench measures").
BENCH_TARGET := $(TARGET)

BENCH_ARGS := $(SCENARIO) \
  $(if $(SERVICES),--services $(SERVICES)) $(if $(MODES),--modes $(MODES)) \
  $(if $(REPS),--reps $(REPS)) $(if $(BENCH_TARGET),--target $(BENCH_TARGET)) \
  --set kube_proxy_version=$(KUBE_VERSION) \
  $(if $(OUT),--out $(OUT)) $(if $(KERNEL),--kernel $(KERNEL)) $(if $(BUDGET),--budget $(BUDGET)) $(if $(PLAN_ONLY),--plan-only)

UML_KERNEL_DEPS := linux-source-6.1 build-essential bc bison flex libssl-dev libelf-dev xz-utils

.PHONY: setup apt bench lint test test-fast report publish notebook browser kube cluster-apt cluster-bins cluster-images cluster cluster-down uml-kernel clean

setup: apt $(STAMP)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

# A UML kernel with IPVS *and* nftables NAT built in (Debian's has no nftables NAT), so all three
# modes are measured on one kernel here. Built once (~10-25 min on 2 cores) into ~/.cache/kpbench.
uml-kernel:
	@missing=""; for p in $(UML_KERNEL_DEPS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	bash harness/lab/build_uml_kernel.sh $(UML_KERNEL_OUT)

bench: setup
	@$(MAKE) --no-print-directory uml-kernel || echo "warning: the kpbench UML kernel could not be built; modes may be split across kernels (see kpbench doctor)"
	@echo "kpbench: target $(or $(BENCH_TARGET),from the scenario $(SCENARIO) (lab for default); TARGET=local for real kube-proxy)"
	$(KPBENCH) run $(BENCH_ARGS)

# Lint and type checks take seconds: `make test` runs them before the slow tests.
# All three run even when one fails, so one pass shows every problem.
lint: setup
	@status=0; \
	$(VENV)/bin/ruff check . || status=1; \
	$(VENV)/bin/ruff format --check . || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# The kpbench UML kernel and the Kubernetes binaries are built once into ~/.cache/kpbench (a
# cold build of both takes 25-40 min on 2 cores); the tests that need them skip, saying so, if
# they cannot be built here.
test: setup
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory browser || echo "warning: chromium not installed: the report's browser test will skip"
	@$(MAKE) --no-print-directory uml-kernel || echo "warning: kpbench UML kernel not built: IPVS tests use Debian's UML kernel"
	@$(MAKE) --no-print-directory kube || echo "warning: Kubernetes binaries not built: local-target tests will skip"
	$(VENV)/bin/python -m pytest -q -ra tests

test-fast: setup
	$(VENV)/bin/python -m pytest -q -ra -m "not slow and not uml" tests

report: setup
	@test -n "$(RUN)" || { echo "make report RUN=results/<run folder> [RUN=...]"; exit 2; }
	$(KPBENCH) report $(RUN)

# A self-contained folder to publish (index.html, report.md + figures/, samples.parquet/.csv, metadata.json).
publish: setup
	@test -n "$(RUN)" -a -n "$(DIR)" || { echo "make publish RUN=results/<run folder> DIR=<output folder>"; exit 2; }
	$(KPBENCH) report $(RUN) --publish $(DIR)

# JupyterLab on notebooks/ with this venv's kernel (the `analysis` extra); KPBENCH_RUN picks the run.
notebook: setup
	$(VENV)/bin/pip install -q -e '.[test,analysis]'
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(JUPYTER_ARGS)

# Headless Chromium (Debian's package) for the report's browser test only; nothing else needs it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian package: chromium (for tests/unit/test_report_browser.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

kube:
	PATH="$$PATH:/usr/local/go/bin" bash kube/build.sh $(KUBE_VERSION)

# The offline test cluster's binaries (`kpbench cluster up`): `make kube`'s three plus kubelet,
# kube-controller-manager, kube-scheduler and containerd v2, cached in ~/.cache/kpbench like them
# (after `make kube`, 14 min on 2 busy shared cores: kubelet 5.4, kube-controller-manager 2.4,
# kube-scheduler 0.5, containerd 5.6). runc and the CNI plugins are Debian's, installed here rather
# than by `make setup`, which needs neither.
CONTAINERD_VERSION ?= $(shell sed -n 's/^default_version=//p' kube/build_containerd.sh)
CLUSTER_APT_PACKAGES := runc containernetworking-plugins

cluster-apt:
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(CLUSTER_APT_PACKAGES)"

cluster-bins: cluster-apt
	PATH="$$PATH:/usr/local/go/bin" bash kube/build.sh --cluster $(KUBE_VERSION)
	PATH="$$PATH:/usr/local/go/bin" bash kube/build_containerd.sh $(CONTAINERD_VERSION)

# The offline test cluster's images (harness/testcluster/images.py): pause, registry.k8s.io/kube-proxy
# of KUBE_VERSION and the harness's own (./Dockerfile's equivalent), as OCI archives in
# ~/.cache/kpbench/images for `ctr images import`; built from Debian packages and the built kube-proxy,
# rebuilt only when what they are made of changes. Measured on 2 busy shared cores: cold 9 min (Debian
# base + kube-proxy 2.4, the Python dependencies' layer + harness 6.8), after a harness source change
# 2 min, nothing changed 0.4 s.
CLUSTER_IMAGE_PACKAGES := mmdebstrap umoci gcc libc6-dev

cluster-images: setup kube
	@$(MAKE) --no-print-directory apt APT_PACKAGES="$(CLUSTER_IMAGE_PACKAGES)"
	$(VENV)/bin/python -m harness.testcluster.images build --kube-version $(KUBE_VERSION)

# The offline test cluster itself (`kpbench cluster up`, harness/testcluster): control plane and NODES
# nodes on this machine, kube-proxy as kubeadm deploys it; prints the kubeconfig for
# `kpbench run --target cluster --kubeconfig F --yes`. `make cluster-down` removes all of it.
NODES ?= 2

cluster: setup cluster-bins cluster-images
	$(KPBENCH) cluster up --nodes $(NODES) --kube-version $(KUBE_VERSION)

cluster-down: setup
	$(KPBENCH) cluster down

clean:
	@if [ -x $(KPBENCH) ]; then $(KPBENCH) clean; fi
	rm -rf build *.egg-info .pytest_cache .ruff_cache .mypy_cache
