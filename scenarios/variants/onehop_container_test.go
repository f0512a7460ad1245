package variants

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/deploy/image"
)

// agentContainerd builds the agent image from this checkout (a real static go build), starts a
// containerd of the test's own with Debian's runc, and imports the image; all removed at the end.
func agentContainerd(t *testing.T) *image.Containerd {
	t.Helper()
	if err := image.RequireTools(image.ContainerdTools); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, file, _, _ := runtime.Caller(0)
	res, err := image.Build(ctx, image.Options{Source: filepath.Join(filepath.Dir(file), "..", ".."),
		Out: filepath.Join(t.TempDir(), "agent.tar"), Tag: "onehop.local/onehop-agent:test"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := image.StartContainerd(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := c.Import(ctx, res.Path); err != nil {
		t.Fatal(err)
	}
	c.Image = res.Ref
	t.Logf("agent image %s %s (config %s)", res.Ref, res.Digest, res.ConfigDigest)
	return c
}

// servedBy is each server pod's count of requests received, read inside the pod on loopback.
func servedBy(t *testing.T, c *netns.Cluster, pods ...string) []int64 {
	t.Helper()
	var out []int64
	for _, pod := range pods {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return c.Dial(ctx, pod, network, addr)
			}}}
		resp, err := client.Get("http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(loadgen.StatsPort)) + "/requests")
		if err != nil {
			t.Fatal(err)
		}
		var st loadgen.ServerStats
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, st.Echo)
	}
	return out
}

// The onehop variant with its node agents as containers of the image (containerd + runc, not
// privileged: AgentCapabilities only) carries the lab's traffic: a client's connections to a
// service VIP are balanced in the kernel over both endpoints, survive agent restarts (SIGKILL
// and SIGTERM to the container), and uninstall leaves no container, program or pin.
func TestOnehopAgentsInContainers(t *testing.T) {
	_, p, name := testProvider(t, "tc")
	rt := agentContainerd(t)
	ctx := context.Background()
	web := map[string]string{"app": "web"}
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{{Name: "onehop", Labels: map[string]string{DataplaneModeLabel: "onehop"}}},
		Pods: []clusters.PodSpec{{Name: "client", Namespace: "onehop", Node: "n1"},
			{Name: "web-1", Namespace: "onehop", Node: "n1", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}},
			{Name: "web-2", Namespace: "onehop", Node: "n2", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}}},
		Services: []clusters.ServiceDef{{Name: "web", Namespace: "onehop", Selector: web, Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}}}
	v := &Onehop{Runtime: rt}
	c, err := upAndInstall(t, p, spec, v)
	if err != nil {
		t.Fatal(err)
	}

	// Each agent is the image's process, in its node's network namespace, with only its caps.
	for _, node := range []string{"n1", "n2"} {
		pid, err := rt.TaskPID(ctx, v.containerID(node))
		if err != nil {
			t.Fatal(err)
		}
		checkAgentContainer(t, c, node, pid)
	}

	vip := serviceIP(t, c, "onehop", "web")
	url := "http://" + vip + loadgen.EchoPath
	requests := func(n int, when string) {
		t.Helper()
		before := servedBy(t, c, "web-1", "web-2")
		for i := 0; i < n; i++ {
			if status, _ := get(t, c, "client", url); status != "200" {
				t.Fatalf("%s: request %d to %s: status %q", when, i, vip, status)
			}
		}
		after := servedBy(t, c, "web-1", "web-2")
		d1, d2 := after[0]-before[0], after[1]-before[1]
		t.Logf("%s: %d requests, web-1 (n1) served %d, web-2 (n2) %d", when, n, d1, d2)
		if d1+d2 != int64(n) || d1 < int64(n)/5 || d2 < int64(n)/5 {
			t.Errorf("%s: %d requests not balanced over the endpoints: %d and %d", when, n, d1, d2)
		}
	}
	requests(40, "agents in containers")
	if n := natPackets(t, c, vip); n != 0 {
		t.Errorf("%d packets went through the iptables service NAT: the containers' programs did not carry the traffic", n)
	}

	// Restarts, as the restart scenario does them: the pinned programs serve meanwhile and the
	// new container adopts them.
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		old, _ := rt.TaskPID(ctx, v.containerID("n1"))
		ev, err := v.Restart(ctx, c, "n1", sig)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := rt.TaskPID(ctx, v.containerID("n1"))
		if err != nil || pid == old {
			t.Fatalf("after %s: task pid %d (was %d): %v", ev.Signal, pid, old, err)
		}
		t.Logf("restart with %s: ready after %.0f ms (%s)", ev.Signal, ev.ReadyMS, ev.Daemon)
		requests(20, "after "+ev.Signal)
	}
	if n := natPackets(t, c, vip); n != 0 {
		t.Errorf("%d packets went through the iptables service NAT across the restarts", n)
	}

	// Uninstall (the image's --uninstall, in a container) leaves nothing behind.
	if err := v.Uninstall(ctx, c); err != nil {
		t.Fatal(err)
	}
	if ids, err := rt.Containers(ctx); err != nil || len(ids) != 0 {
		t.Errorf("containers left after uninstall: %v %v", ids, err)
	}
	for _, node := range []string{"n1", "n2"} {
		if progs, err := datapath.AttachedPrograms(c.NodeCgroup(node)); err != nil || len(progs) != 0 {
			t.Errorf("%s: programs still attached after uninstall: %v %v", node, progs, err)
		}
	}
}

// checkAgentContainer: pid is the agent from the image (its root is the container's), in the
// node's network namespace, in the cgroup the lab counts as the node's agent, with exactly
// AgentCapabilities.
func checkAgentContainer(t *testing.T, c *netns.Cluster, node string, pid int) {
	t.Helper()
	proc := fmt.Sprintf("/proc/%d", pid)
	cmdline, _ := os.ReadFile(proc + "/cmdline")
	if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 != image.Entrypoint {
		t.Errorf("%s: agent pid %d runs %q, want the image's %s", node, pid, argv0, image.Entrypoint)
	}
	// Its root is the image's: the agent and nothing else (no /bin, no /etc).
	if _, err := os.Stat(proc + "/root" + image.Entrypoint); err != nil {
		t.Errorf("%s: the agent's root has no %s: %v", node, image.Entrypoint, err)
	}
	if _, err := os.Stat(proc + "/root/bin"); err == nil {
		t.Errorf("%s: the agent's root has a /bin: not the image's empty base", node)
	}
	var nsAgent, nsNode syscall.Stat_t
	if err := syscall.Stat(proc+"/ns/net", &nsAgent); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(c.NodeNetnsPath(node), &nsNode); err != nil {
		t.Fatal(err)
	}
	if nsAgent.Ino != nsNode.Ino {
		t.Errorf("%s: the agent's container is not in the node's network namespace", node)
	}
	cg, _ := os.ReadFile(proc + "/cgroup")
	if want := "/onehop-" + c.Name() + "/" + node + "/daemon-onehop-agent/"; !strings.Contains(string(cg), "0::"+want) {
		t.Errorf("%s: agent cgroups %q, want v2 under %s", node, cg, want)
	}
	status, _ := os.ReadFile(proc + "/status")
	var want uint64
	for _, name := range image.AgentCapabilities {
		want |= 1 << capNumber[name]
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:\t"); ok {
			if got, _ := strconv.ParseUint(v, 16, 64); got != want {
				t.Errorf("%s: agent's effective capabilities %#x, want %#x (%v)", node, got, want, image.AgentCapabilities)
			}
		}
	}
}

// capNumber are the capabilities AgentCapabilities may name (linux/capability.h).
var capNumber = map[string]uint{"CAP_DAC_OVERRIDE": 1, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12,
	"CAP_NET_RAW": 13, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}
