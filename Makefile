# onehop: lab and agent. `make bench-all` regenerates reports/; `make test` runs every test.
# Both install what they need from Debian packages first (make deps) and check root, kernel
# features and the cgroup v2 mount (onehop doctor) before touching anything.
SHELL := /bin/bash
GO    ?= go
BIN   := bin/onehop
# file-or-command:package pairs; a package is installed when its command (or file) is missing.
DEPS  := ip:iproute2 iptables-restore:iptables ip6tables-restore:iptables sysctl:procps ps:procps nsenter:util-linux \
         clang:clang llvm-strip:llvm bpftool:bpftool /usr/include/bpf/bpf_helpers.h:libbpf-dev \
         curl:curl haproxy:haproxy prometheus:prometheus \
         containerd:containerd ctr:containerd runc:runc skopeo:skopeo \
         /usr/lib/cni/bridge:containernetworking-plugins

.PHONY: all deps build image generate doctor test test-istiod e2e lint bench-all bench-quick bench-latency bench-scale bench-datapath gate report kube-bins kind-lab kind-lab-clean

all: build

deps:
	@missing=""; for pair in $(DEPS); do \
	  what=$${pair%%:*}; \
	  if [ "$${what:0:1}" = / ]; then [ -e "$$what" ]; else command -v $$what >/dev/null 2>&1; fi || missing="$$missing $${pair##*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  pkgs=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: $$pkgs- run make as root to install them" >&2; exit 1; fi; \
	  echo "installing Debian packages: $$pkgs"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkgs >/dev/null; \
	fi

build:
	$(GO) build -o bin/ ./cmd/onehop ./cmd/onehop-agent

# kind on these machines, offline (clusters/kind/nodeimage/FINDINGS.md): a dockerd of the lab's
# own under /var/tmp/onehop-kindlab (runc wrapper for the missing CAP_SYS_RESOURCE) and a kind node
# image built here (Debian rootfs, Kubernetes from the module proxy). Then, for example:
#   eval "$$(clusters/kind/nodeimage/lab.sh env)"
#   bin/onehop run --provider kind --kind-image onehop.local/kind-node:v1.37.2 \
#     --kind-config clusters/kind/nodeimage/kind-config.yaml scenarios/kubernetes/baseline-vs-onehop.yaml
# kind-lab-clean removes the dockerd, its rules, bridges and files again.
kind-lab: deps kube-bins
	@command -v dockerd >/dev/null && command -v debootstrap >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null)
	clusters/kind/nodeimage/lab.sh start
	clusters/kind/nodeimage/build.sh

kind-lab-clean:
	clusters/kind/nodeimage/lab.sh clean

# The agent's container image, without a Docker daemon or registry: a static onehop-agent on an
# empty base, as a docker-archive tarball (docker/podman load, ctr images import, kind load
# image-archive). Prints its digest; the same source gives the same digest. IMAGE_TAG overrides
# the tag (default: git describe).
IMAGE_OUT ?= bin/onehop-agent-image.tar
image: build
	$(BIN) image --out $(IMAGE_OUT) $(if $(IMAGE_TAG),--tag $(IMAGE_TAG))

# Regenerate the BPF objects and their Go bindings, and the workload API's Go types from its
# .proto (all committed, so plain builds need neither clang nor protoc).
GEN_DEPS := protoc:protobuf-compiler /usr/include/google/protobuf/wrappers.proto:libprotobuf-dev
generate: deps
	@$(MAKE) --no-print-directory deps DEPS="$(GEN_DEPS)"
	$(GO) generate ./bpf ./dataplane/workloadapi

doctor: deps build
	@$(BIN) doctor

# interop/istiod is a Go module of its own: it builds Istio's xDS generator (istio.io/istio),
# which the main module does not depend on. Its first build takes 5-8 minutes on 2 cores.
INTEROP := interop/istiod
E2E     := e2e

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out" >&2; exit 1; fi
	$(GO) vet ./...
	cd $(INTEROP) && $(GO) vet ./...
	cd $(E2E) && $(GO) vet ./...

# The Kubernetes tests' programs, built once into ~/.cache/onehop (or $ONEHOP_KUBE_CACHE) from the
# Go module proxy: kube-apiserver and etcd (internal/kubetest), helm (deploy/chart), and a node's
# kubelet, controller-manager, scheduler, kube-proxy and kubectl (clusters/localkube, e2e). Tests
# build them on first use; this does it ahead (a cold build takes about 20-25 minutes on 2 cores).
kube-bins:
	$(GO) run ./internal/kubetest/cmd/kube-bins

# Tests use real namespaces, sockets, processes and BPF: root is required (CI is root).
# The interop tests run the real agent against istiod's own config and xDS generators.
# The e2e suites (e2e-framework) run last, on a localkube cluster they bring up and remove.
# clusters/localkube's tests run a whole Kubernetes cluster: alone, after the others, so that
# neither its load nor its cgroups show in tests that watch the host (a lab's teardown check).
test: doctor lint kube-bins
	ONEHOP_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v /clusters/localkube)
	ONEHOP_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m ./clusters/localkube
	cd $(INTEROP) && ONEHOP_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m ./...
	cd $(E2E) && $(GO) test -count=1 -timeout 20m ./...

# The e2e suites alone: on a localkube cluster (root), or on yours with
# E2E_ARGS='-args --kubeconfig=$$HOME/.kube/config --image-tag=<tag>' (see e2e/README.md).
e2e: doctor kube-bins
	cd $(E2E) && $(GO) test -count=1 -timeout 20m -v ./... $(E2E_ARGS)

# The agent against Istio's xDS generator only (what `make test` runs last).
test-istiod: doctor
	cd $(INTEROP) && ONEHOP_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m -v ./...

bench-all: doctor
	$(BIN) bench-all

# A first look in under 10 minutes: every scenario, 3 repetitions of 1 s; reports/quick/ is
# marked quick and is not committed.
bench-quick: doctor
	$(BIN) bench-all --quick --results results/quick --out reports/quick

# The latency gate: the agent built at GATE_BASE (default: the revision in .ci/gate-base, the
# last landed one) against the working tree, side by side; exit 1 on a regression.
GATE_BASE ?= $(shell cat .ci/gate-base 2>/dev/null)
gate: doctor
	@if [ -z "$(GATE_BASE)" ]; then echo "no base revision: set GATE_BASE=<rev> or write one in .ci/gate-base" >&2; exit 1; fi
	$(BIN) gate --base $(GATE_BASE)

bench-latency: doctor
	$(BIN) run scenarios/mesh-latency-vs-connections.yaml
	$(BIN) report

# Agent at scale: 10,000 services x 10 endpoints pushed over xDS to a real onehop-agent.
bench-scale: doctor
	$(BIN) bench-scale

# Kernel datapath: map programming and connect() cost with 10 vs 100k endpoints in the maps.
bench-datapath: doctor
	$(GO) test -run '^$$' -bench . -benchtime 1s -count 3 ./dataplane/datapath

report: build
	$(BIN) report
