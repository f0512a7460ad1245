package variants

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/internal/testbin"
)

// testProvider returns the onehop binary, a lab provider using it and a unique lab name starting
// with prefix; the lab is removed when the test ends, whatever happens.
func testProvider(t *testing.T, prefix string) (string, *netns.Provider, string) {
	t.Helper()
	testbin.RequireRoot(t)
	bin := testbin.Onehop(t)
	p, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	p.Binary = bin
	b := make([]byte, 4)
	rand.Read(b)
	name := fmt.Sprintf("%s%x", prefix, b)
	t.Cleanup(func() { p.Down(context.Background(), name) })
	return bin, p, name
}

// upAndInstall brings the lab up and installs v, returning Install's error; v is uninstalled
// (and that checked) when the test ends.
func upAndInstall(t *testing.T, p *netns.Provider, spec clusters.Spec, v NetnsVariant) (*netns.Cluster, error) {
	t.Helper()
	c, err := p.Up(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	err = v.Install(context.Background(), c)
	t.Cleanup(func() {
		if err := v.Uninstall(context.Background(), c); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	return c.(*netns.Cluster), err
}

// serviceIP is the cluster IP of service ns/name.
func serviceIP(t *testing.T, c *netns.Cluster, ns, name string) string {
	t.Helper()
	svc, ok := c.Services().Snapshot().Service(ns, name)
	if !ok {
		t.Fatalf("no service %s/%s", ns, name)
	}
	return svc.ClusterIPs[0].String()
}

// podIP is a pod's first IP.
func podIP(t *testing.T, c *netns.Cluster, name string) string {
	t.Helper()
	p, ok := c.Pod(name)
	if !ok {
		t.Fatalf("no pod %s", name)
	}
	return p.IPs[0].String()
}

// labHAProxies lists the live HAProxy processes in the lab's cgroups (node daemons, pods and
// their sidecar containers). Zombies do not count: a worker whose master exited first is
// reparented to PID 1, which on some hosts (containers) never reaps it; it holds no socket.
func labHAProxies(t *testing.T, c *netns.Cluster) []int {
	t.Helper()
	var pids []int
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		comm, _ := os.ReadFile(filepath.Join(d, "comm"))
		cg, _ := os.ReadFile(filepath.Join(d, "cgroup"))
		status, _ := os.ReadFile(filepath.Join(d, "status"))
		if strings.Contains(string(status), "\nState:\tZ") {
			continue
		}
		if strings.TrimSpace(string(comm)) == "haproxy" && strings.Contains(string(cg), "/onehop-"+c.Name()+"/") {
			pid, _ := strconv.Atoi(filepath.Base(d))
			pids = append(pids, pid)
		}
	}
	return pids
}
