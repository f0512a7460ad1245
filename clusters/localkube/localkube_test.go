package localkube

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/deploy/image"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// A real cluster comes up: the node is Ready, a Deployment of the lab's fortio server (an image
// built here and loaded into the node) runs, kube-proxy carries a request to its Service's VIP
// from the node; Down then leaves nothing: no process, mount, cgroup, namespace, interface or file.
func TestUpRunsPodsAndDownLeavesNothing(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := fmt.Sprintf("t%d", os.Getpid()%100000)
	ctx := context.Background()
	hostNetns := func() map[string]bool {
		m := map[string]bool{}
		entries, _ := os.ReadDir("/run/netns")
		for _, e := range entries {
			m[e.Name()] = true
		}
		return m
	}
	netnsBefore := hostNetns()
	c, err := Up(ctx, Options{Name: name, Source: repoRoot(), Link: mustPrefix("10.250.1.0/30"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	downed := false
	t.Cleanup(func() {
		if !downed {
			Down(context.Background(), name)
		}
	})
	dump := func() {
		for _, comp := range []string{"kubelet", "containerd"} {
			t.Logf("%s log:\n%s", comp, c.LogTail(comp, 3000))
		}
		out, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		t.Logf("pods:\n%s", out)
	}

	// The workload image: the lab's own binary, whose fortio server counts what it serves.
	res, err := image.BuildWorkload(ctx, repoRoot(), "test", filepath.Join(t.TempDir(), "workload.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.LoadImage(ctx, res.Path); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(t.TempDir(), "web.yaml")
	os.WriteFile(manifest, []byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: fortio
        image: "onehop.local/onehop-workload:test"
        imagePullPolicy: Never
        args: [workload, fortio-server]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 8080}]}
`), 0o600)
	if _, err := c.Kubectl(ctx, "apply", "-f", manifest); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "rollout", "status", "deployment/web", "--timeout=120s"); err != nil {
		dump()
		t.Fatal(err)
	}
	ip, err := c.Kubectl(ctx, "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		t.Fatal(err)
	}
	// From the node's namespace (kube-proxy's rules are there), as a hostNetwork pod would;
	// kube-proxy programs the endpoints a moment after the pods are ready.
	var out []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		out, err = c.RunOnNode(ctx, "curl", "-s", "-m", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://"+string(ip)+":8080/echo")
		if (err == nil && string(out) == "200") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || string(out) != "200" {
		dump()
		t.Fatalf("request to the service VIP %s from the node: %q %v", ip, out, err)
	}
	if logs, err := c.Kubectl(ctx, "logs", "deployment/web"); err != nil {
		t.Errorf("kubectl logs (API server to kubelet): %v", err)
	} else {
		t.Logf("kubectl logs works (%d bytes)", len(logs))
	}

	start := time.Now()
	if err := Down(ctx, name); err != nil {
		t.Fatal(err)
	}
	downed = true
	t.Logf("down in %s", time.Since(start).Round(time.Millisecond))
	for _, p := range []string{c.Dir, c.Netns, c.CgroupV2, filepath.Join(cgroupFS, "memory", prefix(name)), "/sys/class/net/" + prefix(name)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there after Down", p)
		}
	}
	// Pods' namespaces live under containerd's state directory, not in the host's /run/netns.
	for n := range hostNetns() {
		if !netnsBefore[n] && strings.HasPrefix(n, "cni-") {
			t.Errorf("pod network namespace /run/netns/%s is still there after Down", n)
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), c.Dir) {
		t.Errorf("mounts under %s after Down", c.Dir)
	}
	if s := image.ShimsOf(c.containerd); len(s) > 0 {
		t.Errorf("containerd shims left: %v", s)
	}
	if err := Down(ctx, name); err != nil {
		t.Errorf("Down of a cluster that is gone: %v", err)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
