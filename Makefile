# kubeinfer.llm: the two commands a new machine needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CACHE        ?= $(HOME)/.cache/kubeinfer
VENV         ?= $(CACHE)/venv
PY           := $(VENV)/bin/python
REPO         := $(CURDIR)
COLLECTIONS  := $(CACHE)/collections
COLL_LINK    := $(COLLECTIONS)/ansible_collections/kubeinfer/llm
CLUSTER      := tools/localcluster/cluster.sh
CLUSTER_NAME ?= kubeinfer
include tools/localcluster/versions.env
BIN_PATH     := $(CACHE)/kubernetes-$(KUBERNETES_VERSION):$(CACHE)/helm-$(HELM_VERSION):$(CACHE)/kwok-$(KWOK_VERSION)

# Everything Ansible, pytest and Molecule need to find the collection, the cluster and helm.
export KUBEINFER_CACHE := $(CACHE)
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export HELM_BINARY := $(CACHE)/helm-$(HELM_VERSION)/helm
export KUBEINFER_CLUSTER := $(CLUSTER_NAME)
export KUBEINFER_KUBECONFIG := $(CACHE)/kwok/clusters/$(CLUSTER_NAME)/kubeconfig.yaml
export K8S_AUTH_KUBECONFIG := $(KUBEINFER_KUBECONFIG)
export ANSIBLE_PYTHON_INTERPRETER := $(PY)
export PATH := $(VENV)/bin:$(BIN_PATH):$(PATH)

.PHONY: help deps venv binaries collection cluster-up cluster-down kubeconfig demo teardown bench-gpu-node bench-autoscale bench-site test test-keda sanity unit gates integration molecule lint build clean

help:
	@echo "make demo    - build what is missing, start the local cluster, run playbooks/site.yml"
	@echo "make test    - sanity, unit, integration and Molecule tests on the local cluster"
	@echo "make test-keda - build the real KEDA once and run its integration tests (not part of make test)"
	@echo "make cluster-up | cluster-down | kubeconfig"

# Debian packages the local cluster needs: rsync (sanity copy), curl and jq (scripts), iproute2 and
# util-linux (the simulator's network namespace: ip, unshare), socat (the simulator's relays to 127.0.0.1
# and the pod network's relays from pod IPs). Prometheus and prometheus-operator are built from source.
DEBIAN_PACKAGES := rsync curl jq iproute2 util-linux socat
deps:
	@tools/install-debian-packages.sh $(DEBIAN_PACKAGES)

venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

binaries:
	tools/localcluster/build.sh

collection:
	@mkdir -p $(dir $(COLL_LINK))
	@ln -sfn $(REPO) $(COLL_LINK)

# The control plane, then the host processes around it: the pod network, prometheus-operator, Prometheus,
# Prometheus Adapter and their sync loop (metrics.sh; MONITORING=annotations for the community chart's
# scraping instead of the operator), the simulation of what the GPU stack does on the nodes (gpu_sim.py), and the
# kubelet and kube-proxy for the vLLM pods a test opts in (podkubelet.py: probes, graceful termination, Service routes).
cluster-up: deps binaries
	$(CLUSTER) up
	tools/localcluster/metrics.sh up
	tools/localcluster/gpu_sim.py start
	tools/localcluster/podkubelet.py start

cluster-down:
	$(CLUSTER) down

kubeconfig:
	@$(CLUSTER) kubeconfig

demo: deps venv binaries collection cluster-up
	env_vars=$$(tools/localcluster/demo-env.sh up) && \
	  ansible-playbook -i localhost, -c local playbooks/site.yml \
	    -e @tools/localcluster/demo-vars.yml -e @$$env_vars

# The tests run on a cluster of their own, so that they never touch the demo's, and Molecule's
# destroy step leaves nothing behind.
# Undo what make demo did on the cluster (playbooks/teardown.yml); the cluster keeps running.
teardown: venv collection
	ansible-playbook -i localhost, -c local playbooks/teardown.yml -e @tools/localcluster/demo-vars.yml
	tools/localcluster/demo-env.sh down

test: deps venv binaries collection
	$(MAKE) --no-print-directory CLUSTER_NAME=kubeinfer-test sanity unit gates integration molecule

# ansible-test wants the collection under ansible_collections/<ns>/<name>; it runs on a copy.
sanity: venv
	tools/sanity/run.sh

lint: venv
	ruff check plugins tests tools bench
	mypy plugins/module_utils
	ansible-lint roles playbooks molecule
	@# ansible-lint installs a copy of the collection under .ansible/; nothing may load a stale copy later.
	rm -rf .ansible

# The gates users and Galaxy run, each in a venv of its own (tools/gates/): galaxy-importer on the built
# tarball, antsibull-docs and antsibull-changelog lint, ansible-builder's build context against the
# modules' imports, and checkov on the vLLM chart rendered for a matrix of values.
gates: venv
	tools/gates/galaxy.sh
	tools/gates/docs.sh
	tools/gates/ee.sh
	tools/gates/checkov.sh

unit: venv collection lint
	pytest -q tests/unit

# test_keda.py needs the real KEDA operator, which make test does not build (it would push a fresh
# .ci/run past 60 minutes); make test-keda builds it once and runs that file.
integration: deps venv collection cluster-up
	pytest -q tests/integration --ignore=tests/integration/test_keda.py

test-keda: deps venv collection cluster-up
	tools/localcluster/build.sh keda
	pytest -q tests/integration/test_keda.py

molecule: venv collection binaries
	molecule test -s default

# gpu_node against one kubernetes.core k8s_taint + k8s patch per node, on 1,000 simulated nodes
# of a cluster of its own (bench/README.md). The baseline runs on a sample and is extrapolated.
bench-gpu-node: venv binaries collection
	BENCH_BASELINE_NODES=$${BENCH_BASELINE_NODES:-300} $(PY) bench/gpu_node_bench.py

# The autoscaling chain under real load, end to end, on a cluster of its own (bench/README.md):
# two models in one namespace, 3 load cycles, medians. About 8 minutes.
bench-autoscale: venv binaries collection
	$(PY) bench/autoscale_bench.py

# playbooks/site.yml against the same seven steps written with kubernetes.core (bench/playbooks/
# kubernetes_core_site.yml), each side on fresh clusters of its own (bsite-site, bsite-kcore; bench/README.md):
# --check, first run and converged re-run per fresh cluster, BENCH_RUNS (3) clusters per side, medians.
bench-site: venv binaries collection
	$(PY) bench/site_bench.py

build: venv
	ansible-galaxy collection build --force --output-path .build/

clean:
	rm -rf .build
