package main

import (
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"--node-id", "n1", "--memory-limit", "1GiB"})
	if err != nil || c.memoryLimit != 1<<30 || c.nodeID != "n1" {
		t.Fatalf("got %+v, %v", c, err)
	}
	if c, err = parseFlags([]string{"--node-id", "n1"}); err != nil || c.memoryLimit != 75<<20 {
		t.Fatalf("default memory limit: got %d, %v", c.memoryLimit, err)
	}
	t.Setenv("ONEHOP_MEMORY_LIMIT", "0")
	if c, err = parseFlags([]string{"--node-id", "n1"}); err != nil || c.memoryLimit != 0 {
		t.Fatalf("ONEHOP_MEMORY_LIMIT=0: got %d, %v", c.memoryLimit, err)
	}
	if c, err = parseFlags([]string{"--node-id", "n1", "--sockmap"}); err != nil || !c.sockmap {
		t.Fatalf("--sockmap: got %+v, %v", c, err)
	}
	if c, err = parseFlags([]string{"--uninstall", "--bpffs", "/sys/fs/bpf/x"}); err != nil || !c.uninstall || c.bpffs != "/sys/fs/bpf/x" {
		t.Fatalf("--uninstall without --node-id: got %+v, %v", c, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--node-id is required"},
		{[]string{"--uninstall", "--bpffs="}, "--uninstall needs --bpffs"},
		{[]string{"--node-id", "n1", "--memory-limit", "75MB"}, `--memory-limit: "75MB" is not a size`},
		{[]string{"--node-id", "n1", "--memory-limit", "-1"}, `--memory-limit: "-1" is not a size`},
		{[]string{"--node-id", "n1", "--memory-limit", "99999999999GiB"}, "is not a size"},
		{[]string{"--node-id", "n1", "--sockmap", "--telemetry=false", "--track-connections=false"}, "--sockmap needs --track-connections"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "512": 512, "10B": 10, "4KiB": 4096, "75MiB": 75 << 20, "2GiB": 2 << 30} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

// The README's istiod example gives istiod the node id and metadata it accepts; bad identities
// are refused with the flag to fix.
func TestIstioIdentity(t *testing.T) {
	c, err := parseFlags([]string{"--node-id", "n1", "--node-ip", "10.0.0.7"})
	if err != nil {
		t.Fatal(err)
	}
	node := c.id.Node()
	if got, want := node.GetId(), "sidecar~10.0.0.7~onehop-agent-n1.istio-system~istio-system.svc.cluster.local"; got != want {
		t.Errorf("node id %q, want %q", got, want)
	}
	md := node.GetMetadata().GetFields()
	for k, want := range map[string]string{"CLUSTER_ID": "Kubernetes", "NAMESPACE": "istio-system", "NODE_NAME": "n1", "INSTANCE_IPS": "10.0.0.7"} {
		if got := md[k].GetStringValue(); got != want {
			t.Errorf("metadata %s = %q, want %q", k, got, want)
		}
	}
	if md["ISTIO_VERSION"].GetStringValue() == "" {
		t.Error("no ISTIO_VERSION in the metadata")
	}
	t.Setenv("POD_NAME", "onehop-agent-x7k2")
	t.Setenv("POD_NAMESPACE", "onehop-system")
	c, err = parseFlags([]string{"--node-id", "n1", "--node-ip", "10.0.0.7", "--xds-mode", "workload"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.id.ID(), "ztunnel~10.0.0.7~onehop-agent-x7k2.onehop-system~onehop-system.svc.cluster.local"; got != want || !c.delta {
		t.Errorf("workload mode: node id %q (want %q), delta %v (want true)", got, want, c.delta)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--node-id", "n1", "--node-ip", "10.0.0.7", "--proxy-type", "router"}, `proxy type "router"`},
		{[]string{"--node-id", "n1", "--node-ip", "10.0.0.7", "--xds-mode", "workload", "--proxy-type", "sidecar"}, "ztunnel nodes only"},
		{[]string{"--node-id", "n1", "--node-ip", "10.0.0.7", "--xds-mode", "lds"}, `--xds-mode "lds"`},
		{[]string{"--node-id", "n1", "--node-ip", "nope"}, `--node-ip "nope" is not an IP`},
		{[]string{"--node-id", "sidecar~10.0.0.7~x", "--node-ip", "10.0.0.7"}, "node id"},
		{[]string{"--node-id", "n1", "--node-ip", "10.0.0.7", "--cluster-id", ""}, "cluster id"},
	} {
		if _, err := parseFlags(tc.args); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}
