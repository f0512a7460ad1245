package variants

import (
	"context"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/kubeproxy"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
)

// onehopLab brings up a lab with an enrolled namespace (onehop) and a plain one (plain), each
// with a client on n1 and a 2-endpoint service "web" (one endpoint per node), installs the
// onehop variant and tears everything down at the end. The onehop namespace also has a service
// "aaa" on the same HTTP port whose only endpoint (the client pod) serves nothing: it sorts
// first in the port's route configuration, so a VIP routed by the wrong virtual host fails.
func onehopLab(t *testing.T) (*netns.Cluster, *Onehop) {
	t.Helper()
	return onehopLabMode(t, "")
}

// onehopLabMode is onehopLab with the agents in the given xDS mode ("": the default).
func onehopLabMode(t *testing.T, mode string) (*netns.Cluster, *Onehop) {
	t.Helper()
	bin, p, name := testProvider(t, "tv")
	web := map[string]string{"app": "web"}
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{
		{Name: "onehop", Labels: map[string]string{DataplaneModeLabel: "onehop"}}, {Name: "plain"}}}
	for _, ns := range []string{"onehop", "plain"} {
		spec.Pods = append(spec.Pods,
			clusters.PodSpec{Name: ns + "-client", Namespace: ns, Node: "n1"},
			clusters.PodSpec{Name: ns + "-web-1", Namespace: ns, Node: "n1", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}},
			clusters.PodSpec{Name: ns + "-web-2", Namespace: ns, Node: "n2", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}})
		spec.Services = append(spec.Services, clusters.ServiceDef{Name: "web", Namespace: ns, Selector: web,
			Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	}
	spec.Pods[0].Labels = map[string]string{"role": "client"}
	spec.Services = append(spec.Services, clusters.ServiceDef{Name: "aaa", Namespace: "onehop", Selector: map[string]string{"role": "client"},
		Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	c, err := p.Up(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	v := &Onehop{AgentBinary: bin + "-agent", XDSMode: mode}
	if err := v.Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Uninstall(context.Background(), c); err != nil {
			t.Errorf("uninstall: %v", err)
		}
	})
	return c.(*netns.Cluster), v
}

// get runs one HTTP request from a client pod (a real process in the pod's netns and cgroup,
// where the agent's programs apply) and returns the serving pod's hostname header and the peer
// address curl saw.
func get(t *testing.T, c *netns.Cluster, pod, url string) (status, peer string) {
	t.Helper()
	var out strings.Builder
	proc, err := c.Start(context.Background(), pod, clusters.Command{Name: "curl",
		Argv: []string{"curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code} %{remote_ip}:%{remote_port}", url}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	proc.Wait()
	f := strings.Fields(out.String())
	if len(f) != 2 {
		return out.String(), ""
	}
	return f[0], f[1]
}

// natPackets counts the packets of the kube-proxy-style service chain for a VIP on n1.
func natPackets(t *testing.T, c *netns.Cluster, vip string) int {
	run := func(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
		return c.RunOnNode(ctx, "n1", stdin, argv...)
	}
	n, err := kubeproxy.VIPPackets(context.Background(), run, kubeproxy.IPv4, vip)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

func TestOnehopBalancesInTheKernelOneHop(t *testing.T) {
	for _, mode := range []string{"envoy", "workload"} {
		t.Run(mode, func(t *testing.T) { testOnehopOneHop(t, mode) })
	}
}

func testOnehopOneHop(t *testing.T, mode string) {
	c, _ := onehopLabMode(t, mode)
	enrolledVIP, plainVIP := serviceIP(t, c, "onehop", "web"), serviceIP(t, c, "plain", "web")
	for i := 0; i < 10; i++ {
		status, peer := get(t, c, "onehop-client", "http://"+enrolledVIP+"/echo")
		if status != "200" {
			t.Fatalf("enrolled client -> %s: status %q", enrolledVIP, status)
		}
		// getpeername is rewritten back: the application sees the VIP, not the endpoint.
		if peer != enrolledVIP+":80" {
			t.Errorf("enrolled client saw peer %s, want the VIP %s:80", peer, enrolledVIP)
		}
	}
	// One hop: the enrolled client's packets never met the service's NAT rules.
	if n := natPackets(t, c, enrolledVIP); n != 0 {
		t.Errorf("%d packets of the enrolled client's service went through iptables service NAT", n)
	}
	// A pod of an unenrolled namespace is untouched: it still goes through kube-proxy rules.
	for i := 0; i < 5; i++ {
		if status, _ := get(t, c, "plain-client", "http://"+plainVIP+"/echo"); status != "200" {
			t.Fatalf("plain client: status %q", status)
		}
	}
	if n := natPackets(t, c, plainVIP); n < 5 {
		t.Errorf("unenrolled client's service saw %d NAT packets, want >= 5 (it must use the baseline path)", n)
	}
}

func TestOnehopEnrollmentTogglesWithoutRestart(t *testing.T) {
	c, _ := onehopLab(t)
	v := serviceIP(t, c, "onehop", "web")
	sock := AgentSocket(c, "n1")
	before := natPackets(t, c, v)
	if err := Enroll(context.Background(), sock, agent.EnrollRequest{Netns: c.NetnsPath("onehop-client")}, false); err != nil {
		t.Fatal(err)
	}
	if status, _ := get(t, c, "onehop-client", "http://"+v+"/echo"); status != "200" {
		t.Fatalf("after unenroll: status %q", status)
	}
	if n := natPackets(t, c, v); n <= before {
		t.Errorf("unenrolled client did not fall back to iptables (NAT packets %d -> %d)", before, n)
	}
	if err := Enroll(context.Background(), sock, agent.EnrollRequest{Netns: c.NetnsPath("onehop-client")}, true); err != nil {
		t.Fatal(err)
	}
	mid := natPackets(t, c, v)
	if status, _ := get(t, c, "onehop-client", "http://"+v+"/echo"); status != "200" {
		t.Fatalf("after re-enroll: status %q", status)
	}
	if n := natPackets(t, c, v); n != mid {
		t.Errorf("re-enrolled client went through iptables again (NAT packets %d -> %d)", mid, n)
	}
}

func TestOnehopFollowsEndpointChanges(t *testing.T) {
	c, _ := onehopLab(t)
	ctx := context.Background()
	v := serviceIP(t, c, "onehop", "web")
	url := "http://" + v + "/echo"
	if status, _ := get(t, c, "onehop-client", url); status != "200" {
		t.Fatalf("before the change: status %q", status)
	}
	// Replace both endpoints with one new pod. Until the agent follows, connections go to the
	// removed pods and fail; afterwards every one must succeed, through the kernel (the
	// service's iptables NAT counters stay at zero, so the baseline path never served them).
	web := map[string]string{"app": "web"}
	if _, err := c.CreatePod(ctx, clusters.PodSpec{Name: "onehop-web-3", Namespace: "onehop", Node: "n2", Labels: web,
		Workload: &clusters.Workload{Kind: "fortio-server"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"onehop-web-1", "onehop-web-2"} {
		if err := c.DeletePod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	changed := time.Now()
	for {
		status, _ := get(t, c, "onehop-client", url)
		if status == "200" {
			break
		}
		if time.Since(changed) > time.Second {
			t.Fatalf("new connections did not follow the endpoint change within 1s (last status %q)", status)
		}
	}
	t.Logf("followed after %v", time.Since(changed))
	for i := 0; i < 20; i++ {
		if status, _ := get(t, c, "onehop-client", url); status != "200" {
			t.Fatalf("connection %d after the change: status %q (sent to a removed endpoint?)", i, status)
		}
	}
	if n := natPackets(t, c, v); n != 0 {
		t.Errorf("%d packets went through iptables service NAT: the kernel did not balance them", n)
	}
}

func TestOnehopAgentMetrics(t *testing.T) {
	c, _ := onehopLab(t)
	get(t, c, "onehop-client", "http://"+serviceIP(t, c, "onehop", "web")+"/echo")
	resp, err := agent.Client(AgentSocket(c, "n1")).Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"onehop_agent_programmed_services 3", "onehop_agent_xds_updates_total", "onehop_agent_map_operations_total"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// Control plane down: traffic keeps flowing on what the agents programmed. Control plane back
// with a change made meanwhile: the agents resync and follow it.
func TestOnehopSurvivesControlPlaneRestart(t *testing.T) {
	c, v := onehopLab(t)
	ctx := context.Background()
	url := "http://" + serviceIP(t, c, "onehop", "web") + "/echo"
	v.stopControlPlane()
	for i := 0; i < 10; i++ {
		if status, _ := get(t, c, "onehop-client", url); status != "200" {
			t.Fatalf("request %d with the control plane down: status %q", i, status)
		}
	}
	// While it is down, replace the endpoints (the kube-proxy rules follow at once; the agents
	// cannot until the control plane is back, so connections to the old pods would fail).
	web := map[string]string{"app": "web"}
	if _, err := c.CreatePod(ctx, clusters.PodSpec{Name: "onehop-web-3", Namespace: "onehop", Node: "n2", Labels: web,
		Workload: &clusters.Workload{Kind: "fortio-server"}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"onehop-web-1", "onehop-web-2"} {
		if err := c.DeletePod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	v.mu.Lock()
	_, err := v.startControlPlane(c, c)
	v.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	// The agents reconnect with backoff (at most a few seconds) and resync.
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, _ := get(t, c, "onehop-client", url)
		if status == "200" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents did not resync within 15s of the control plane's return (status %q)", status)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i := 0; i < 10; i++ {
		if status, _ := get(t, c, "onehop-client", url); status != "200" {
			t.Fatalf("after resync, request %d: status %q", i, status)
		}
	}
	if n := natPackets(t, c, serviceIP(t, c, "onehop", "web")); n != 0 {
		t.Errorf("%d packets took the iptables path: traffic did not stay in the kernel data plane", n)
	}
}

// TestOnehopUninstallLeavesNothing: stopping the agents leaves their programs attached (that is
// what a restart relies on); Uninstall detaches them and removes every pin.
func TestOnehopUninstallLeavesNothing(t *testing.T) {
	c, v := onehopLab(t)
	ctx := context.Background()
	for _, node := range []string{"n1", "n2"} {
		if progs, err := datapath.AttachedPrograms(c.NodeCgroup(node)); err != nil || len(progs) == 0 {
			t.Fatalf("%s: attached %v, %v; want the agent's programs", node, progs, err)
		}
	}
	if err := v.Uninstall(ctx, c); err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"n1", "n2"} {
		if progs, err := datapath.AttachedPrograms(c.NodeCgroup(node)); err != nil || len(progs) != 0 {
			t.Errorf("%s: still attached after uninstall: %v %v", node, progs, err)
		}
		var pins []string
		filepath.WalkDir(c.NodeBPFDir(node), func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				pins = append(pins, path)
			}
			return nil
		})
		if len(pins) != 0 {
			t.Errorf("%s: pins left after uninstall: %v", node, pins)
		}
	}
	// Traffic from the enrolled pod is back on kube-proxy's rules.
	before := natPackets(t, c, serviceIP(t, c, "onehop", "web"))
	if status, _ := get(t, c, "onehop-client", "http://"+serviceIP(t, c, "onehop", "web")+"/"); status != "200" {
		t.Errorf("after uninstall: status %q", status)
	}
	if natPackets(t, c, serviceIP(t, c, "onehop", "web")) == before {
		t.Error("after uninstall the VIP is still not served by the service chain")
	}
}
