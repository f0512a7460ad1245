package netns

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/internal/testbin"
)

// newLab brings up a uniquely named lab and removes it when the test ends, pass or fail.
func newLab(t *testing.T, spec clusters.Spec) (*Provider, *Cluster) {
	t.Helper()
	testbin.RequireRoot(t)
	p := testProvider(t)
	if spec.Name == "" {
		spec.Name = uniqueName()
	}
	t.Cleanup(func() {
		if err := p.Down(context.Background(), spec.Name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	c, err := p.Up(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c.(*Cluster)
}

func testProvider(t *testing.T) *Provider {
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	p.Binary = testbin.Onehop(t)
	return p
}

func uniqueName() string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 7)
	rand.Read(b)
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	return "t" + string(b)
}

func pod(name, node string, labels map[string]string) clusters.PodSpec {
	return clusters.PodSpec{Name: name, Node: node, Labels: labels}
}

// serve accepts connections in a pod and reports each accepted connection's pod name.
func serve(t *testing.T, c *Cluster, podName, addr string, hits chan<- string) {
	t.Helper()
	l, err := c.Listen(podName, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.WriteString(conn, podName+"\n")
				if hits != nil {
					hits <- podName
				}
			}()
		}
	}()
}

// ask dials from a pod and returns the first line the server sent and the peer address seen.
func ask(t *testing.T, c *Cluster, from, addr string) (string, net.Addr) {
	t.Helper()
	conn, err := c.Dial(context.Background(), from, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from pod %s: %v", addr, from, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	return strings.TrimSpace(string(b)), conn.RemoteAddr()
}

func TestPodToPodSameAndCrossNode(t *testing.T) {
	spec := clusters.Spec{IPFamilies: []string{"ipv4", "ipv6"},
		Pods: []clusters.PodSpec{pod("a", "n1", nil), pod("b", "n1", nil), pod("c", "n2", nil)}}
	_, c := newLab(t, spec)
	for _, name := range []string{"b", "c"} {
		serve(t, c, name, ":7000", nil)
	}
	for _, target := range []string{"b", "c"} {
		p, _ := c.Pod(target)
		for _, ip := range p.IPs { // IPv4 and IPv6 paths
			got, _ := ask(t, c, "a", net.JoinHostPort(ip.String(), "7000"))
			if got != target {
				t.Errorf("a -> %s (%s): answered by %q", target, ip, got)
			}
		}
	}
	// Cross-node traffic must leave n1 through its uplink: the node's counters prove the path.
	out, err := c.RunOnNode(context.Background(), "n1", nil, "ip", "-s", "-j", "link", "show", "dev", nodeUplink)
	if err != nil || !strings.Contains(string(out), `"packets"`) {
		t.Fatalf("n1 uplink stats: %v %s", err, out)
	}
}

func TestServiceVIPSpreadsOverEndpoints(t *testing.T) {
	app := map[string]string{"app": "web"}
	spec := clusters.Spec{
		Pods: []clusters.PodSpec{pod("client", "n1", nil), pod("web-1", "n1", app), pod("web-2", "n2", app), pod("web-3", "n2", app)},
		Services: []clusters.ServiceDef{{Name: "web", Selector: app,
			Ports: []clusters.ServicePort{{Name: "tcp", Port: 80, TargetPort: 7000}}}},
	}
	_, c := newLab(t, spec)
	hits := make(chan string, 2000)
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		serve(t, c, name, ":7000", hits)
	}
	svc, _ := c.Services().Snapshot().Service("default", "web")
	vip := net.JoinHostPort(svc.ClusterIPs[0].String(), "80")
	const n = 900
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		got, peer := ask(t, c, "client", vip)
		counts[got]++
		if i == 0 && peer.String() != vip {
			t.Errorf("client sees peer %s, want the VIP %s", peer, vip)
		}
	}
	// Chi-square against a uniform spread; 23.0 is the 1e-5 critical value for 2 degrees of
	// freedom, so a correct implementation fails this about once in 100,000 runs.
	chi2 := 0.0
	for _, name := range []string{"web-1", "web-2", "web-3"} {
		d := float64(counts[name]) - n/3.0
		chi2 += d * d / (n / 3.0)
	}
	if chi2 > 23.0 || len(counts) != 3 {
		t.Errorf("spread over endpoints %v is not uniform (chi2 = %.1f)", counts, chi2)
	}
	t.Logf("spread %v chi2 %.2f", counts, chi2)
}

func TestServiceFollowsEndpointChanges(t *testing.T) {
	app := map[string]string{"app": "web"}
	spec := clusters.Spec{
		Pods: []clusters.PodSpec{pod("client", "n1", nil), pod("web-1", "n2", app)},
		Services: []clusters.ServiceDef{{Name: "web", Selector: app,
			Ports: []clusters.ServicePort{{Name: "tcp", Port: 80, TargetPort: 7000}}}},
	}
	_, c := newLab(t, spec)
	serve(t, c, "web-1", ":7000", nil)
	svc, _ := c.Services().Snapshot().Service("default", "web")
	vip := net.JoinHostPort(svc.ClusterIPs[0].String(), "80")
	if got, _ := ask(t, c, "client", vip); got != "web-1" {
		t.Fatalf("before: answered by %q", got)
	}
	// Replace the only endpoint: web-2 in, web-1 out.
	ctx := context.Background()
	if _, err := c.CreatePod(ctx, pod("web-2", "n1", app)); err != nil {
		t.Fatal(err)
	}
	serve(t, c, "web-2", ":7000", nil)
	if err := c.DeletePod(ctx, "web-1"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if got, _ := ask(t, c, "client", vip); got != "web-2" {
			t.Fatalf("after: answered by %q", got)
		}
	}
	// No endpoints: the VIP rejects at once instead of timing out.
	if err := c.DeletePod(ctx, "web-2"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.Dial(ctx, "client", "tcp", vip); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("dial to a service without endpoints: err=%v after %v, want a fast refusal", err, time.Since(start))
	}
}

func TestProcessRunsInPodNetnsAndCgroup(t *testing.T) {
	_, c := newLab(t, clusters.Spec{Nodes: 1, Pods: []clusters.PodSpec{pod("box", "n1", nil)}})
	proc, err := c.Start(context.Background(), "box", clusters.Command{Name: "sleep", Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Process.Kill(); proc.Wait() })
	pid := proc.Process.Pid
	// nsenter enters the namespace and then execs sleep under the same pid.
	waitFor(t, func() bool {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return strings.TrimSpace(string(b)) == "sleep"
	})
	p, _ := c.Pod("box")
	if got, want := inode(t, fmt.Sprintf("/proc/%d/ns/net", pid)), inode(t, netnsPath(p.Netns)); got != want {
		t.Errorf("process netns inode %d, pod netns %d", got, want)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	rel := strings.TrimPrefix(p.Cgroup, c.p.CgroupRoot)
	if !strings.Contains(string(cg), "0::"+rel+"\n") {
		t.Errorf("process cgroups:\n%s\nwant the v2 cgroup %s", cg, rel)
	}
	procs, _ := os.ReadFile(filepath.Join(p.Cgroup, "cgroup.procs"))
	if !strings.Contains(string(procs), fmt.Sprint(pid)) {
		t.Errorf("pod cgroup.procs %q lacks pid %d", procs, pid)
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func inode(t *testing.T, path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// hostState is what a lab must leave as it found it. Objects of other labs (tests running in
// parallel) are left out; everything else on the host is compared as is.
type hostState map[string][]string

func snapshotHost(t *testing.T, p *Provider, ours string) hostState {
	t.Helper()
	// Other packages' tests make objects of their own prefixes meanwhile: Prometheus's
	// (ohprom-), localkube's node (ohk-) and its pods (cni-).
	other := func(name string) bool {
		for _, p := range []string{"ohprom-", "ohk-", "cni-"} {
			if strings.Contains(name, p) {
				return true
			}
		}
		return strings.Contains(name, "onehop-") && !strings.Contains(name, prefix(ours))
	}
	keep := func(lines []string) []string {
		var out []string
		for _, l := range lines {
			if l != "" && !other(l) && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
		sort.Strings(out)
		return out
	}
	cmd := func(argv ...string) []string {
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Fatalf("%v: %v", argv, err)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	var cgroups []string
	filepath.WalkDir(p.CgroupRoot, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			cgroups = append(cgroups, path)
		}
		if d != nil && d.IsDir() && path != p.CgroupRoot && strings.Count(strings.TrimPrefix(path, p.CgroupRoot), "/") > 3 {
			return filepath.SkipDir
		}
		return nil
	})
	// Processes are the lab's when they sit in its cgroup tree. A killed process whose parent
	// died stays a zombie until init reaps it; it holds nothing and is not counted.
	var labProcs []string
	files, _ := filepath.Glob("/proc/[0-9]*/cgroup")
	for _, f := range files {
		b, err := os.ReadFile(f)
		status, _ := os.ReadFile(filepath.Join(filepath.Dir(f), "status"))
		if err == nil && strings.Contains(string(b), "/"+prefix(ours)+"/") && !strings.Contains(string(status), "State:\tZ") {
			labProcs = append(labProcs, f)
		}
	}
	sort.Strings(labProcs)
	var bpf []string // bpffs mounts
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if strings.Contains(line, " - bpf ") {
			bpf = append(bpf, line)
		}
	}
	state, _ := filepath.Glob(filepath.Join(p.StateDir, "*"))
	return hostState{
		"netns":     keep(cmd("ip", "netns", "list")),
		"links":     keep(cmd("ip", "-o", "link", "show")),
		"iptables":  keep(cmd("iptables-save")),
		"ip6tables": keep(cmd("ip6tables-save")),
		"cgroups":   keep(cgroups),
		"processes": labProcs,
		"bpffs":     keep(bpf),
		"state":     keep(state),
	}
}

// diff lists what b has that a had not: what the lab left. Objects that went away meanwhile
// are another test's (packages run in parallel), not a leak.
func (a hostState) diff(b hostState) string {
	var out []string
	for k := range b {
		had := map[string]bool{}
		for _, v := range a[k] {
			had[v] = true
		}
		var added []string
		for _, v := range b[k] {
			if !had[v] {
				added = append(added, v)
			}
		}
		if len(added) > 0 {
			out = append(out, fmt.Sprintf("%s: %q", k, added))
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

func sixPodSpec(name string) clusters.Spec {
	app := map[string]string{"app": "srv"}
	srv := func(n, node string) clusters.PodSpec {
		return clusters.PodSpec{Name: n, Node: node, Labels: app, Workload: &clusters.Workload{Kind: "fortio-server"}}
	}
	return clusters.Spec{Name: name, IPFamilies: []string{"ipv4", "ipv6"},
		Pods:     []clusters.PodSpec{pod("client", "n1", nil), srv("s1", "n1"), srv("s2", "n1"), srv("s3", "n2"), srv("s4", "n2"), srv("s5", "n2")},
		Services: []clusters.ServiceDef{{Name: "srv", Selector: app, Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}},
	}
}

func TestDownLeavesNothingBehind(t *testing.T) {
	testbin.RequireRoot(t)
	p := testProvider(t)
	name := uniqueName()
	t.Cleanup(func() { p.Down(context.Background(), name) })
	before := snapshotHost(t, p, name)
	ctx := context.Background()
	c, err := p.Up(ctx, sixPodSpec(name))
	if err != nil {
		t.Fatal(err)
	}
	// Up again is a no-op that keeps addresses.
	pods := c.Pods()
	c.Close()
	c2, err := p.Up(ctx, sixPodSpec(name))
	if err != nil {
		t.Fatalf("second up: %v", err)
	}
	if a, b := jsonOf(pods), jsonOf(c2.Pods()); a != b {
		t.Errorf("second up changed pods:\n%s\n%s", a, b)
	}
	c2.Close()
	during := snapshotHost(t, p, name)
	if len(during["netns"]) <= len(before["netns"]) || len(during["processes"]) != 5 {
		t.Fatalf("lab objects not visible while up: %d netns, processes %q", len(during["netns"]), during["processes"])
	}
	if err := p.Down(ctx, name); err != nil {
		t.Fatal(err)
	}
	if d := before.diff(snapshotHost(t, p, name)); d != "" {
		t.Errorf("down left traces:\n%s", d)
	}
}

func TestDownAfterKilledRunner(t *testing.T) {
	testbin.RequireRoot(t)
	p := testProvider(t)
	name := uniqueName()
	t.Cleanup(func() { p.Down(context.Background(), name) })
	before := snapshotHost(t, p, name)
	specFile := filepath.Join(t.TempDir(), "spec.yaml")
	os.WriteFile(specFile, []byte(fmt.Sprintf(`name: %s
pods:
  - {name: s1, node: n1, labels: {app: srv}, workload: {kind: fortio-server}}
  - {name: s2, node: n2, labels: {app: srv}, workload: {kind: fortio-server}}
  - {name: s3, node: n2, labels: {app: srv}, workload: {kind: fortio-server}}
services:
  - {name: srv, selector: {app: srv}, ports: [{name: http, port: 80, targetPort: 8080}]}
`, name)), 0o644)
	cmd := exec.Command(p.Binary, "cluster", "up", "-f", specFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill the runner once the first workload runs: the lab is half made.
	waitFor(t, func() bool { return netnsExists(podNetns(name, "s1")) })
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if err := p.Down(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	if d := before.diff(snapshotHost(t, p, name)); d != "" {
		t.Errorf("down after SIGKILL left traces:\n%s", d)
	}
}

func TestTwoLabsCoexist(t *testing.T) {
	_, a := newLab(t, clusters.Spec{Nodes: 1, Pods: []clusters.PodSpec{pod("x", "n1", nil), pod("y", "n1", nil)}})
	pb, b := newLab(t, clusters.Spec{Nodes: 1, Pods: []clusters.PodSpec{pod("x", "n1", nil)}})
	// Same pod names and addresses, different labs: each one's traffic stays its own.
	serve(t, a, "y", ":7000", nil)
	ya, _ := a.Pod("y")
	if got, _ := ask(t, a, "x", net.JoinHostPort(ya.IPs[0].String(), "7000")); got != "y" {
		t.Errorf("lab a: %q", got)
	}
	b.Close()
	if err := pb.Down(context.Background(), b.Name()); err != nil {
		t.Fatal(err)
	}
	if got, _ := ask(t, a, "x", net.JoinHostPort(ya.IPs[0].String(), "7000")); got != "y" {
		t.Errorf("lab a after lab b went down: %q", got)
	}
}

func TestUpRejectsChangedTopology(t *testing.T) {
	p, c := newLab(t, clusters.Spec{Nodes: 1})
	c.Close()
	_, err := p.Up(context.Background(), clusters.Spec{Name: c.Name(), Nodes: 2})
	if err == nil || !strings.Contains(err.Error(), "different nodes") {
		t.Errorf("up with another node count: %v", err)
	}
}

func TestSubnetAndHost(t *testing.T) {
	cases := []struct {
		p     string
		bits  int
		index int
		want  string
	}{
		{"10.244.0.0/16", 24, 1, "10.244.1.0/24"},
		{"10.244.0.0/16", 24, 255, "10.244.255.0/24"},
		{"fd00:10:244::/56", 64, 2, "fd00:10:244:2::/64"},
	}
	for _, c := range cases {
		if got := subnet(netip.MustParsePrefix(c.p), c.bits, c.index); got.String() != c.want {
			t.Errorf("subnet(%s, %d, %d) = %s, want %s", c.p, c.bits, c.index, got, c.want)
		}
	}
	if got := host(netip.MustParsePrefix("10.244.1.0/24"), 2); got.String() != "10.244.1.2" {
		t.Errorf("host = %s", got)
	}
}

// TestOnlyServiceTrafficWalksServiceRules: connections to a pod IP never enter the service
// chain (so a data plane that already picked an endpoint pays nothing for kube-proxy's rules),
// connections to a VIP do.
func TestOnlyServiceTrafficWalksServiceRules(t *testing.T) {
	app := map[string]string{"app": "web"}
	spec := clusters.Spec{
		Pods: []clusters.PodSpec{pod("client", "n1", nil), pod("web-1", "n2", app)},
		Services: []clusters.ServiceDef{{Name: "web", Selector: app,
			Ports: []clusters.ServicePort{{Name: "tcp", Port: 80, TargetPort: 7000}}}},
	}
	_, c := newLab(t, spec)
	serve(t, c, "web-1", ":7000", nil)
	// Packets that jumped to ONEHOP-SERVICES from PREROUTING, on both nodes.
	jumped := func() int {
		total := 0
		for _, node := range []string{"n1", "n2"} {
			out, err := c.RunOnNode(context.Background(), node, nil, "iptables", "-w", "-t", "nat", "-L", "PREROUTING", "-v", "-x", "-n")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(out), "\n") {
				if f := strings.Fields(line); len(f) > 2 && f[2] == "ONEHOP-SERVICES" {
					n, _ := strconv.Atoi(f[0])
					total += n
				}
			}
		}
		return total
	}
	web, _ := c.Pod("web-1")
	before := jumped()
	for range 5 {
		ask(t, c, "client", net.JoinHostPort(web.IPs[0].String(), "7000"))
	}
	if d := jumped() - before; d != 0 {
		t.Errorf("5 connections to the pod IP sent %d packets through the service chain, want 0", d)
	}
	svc, _ := c.Services().Snapshot().Service("default", "web")
	before = jumped()
	for range 5 {
		ask(t, c, "client", net.JoinHostPort(svc.ClusterIPs[0].String(), "80"))
	}
	if d := jumped() - before; d < 5 {
		t.Errorf("5 connections to the VIP sent %d packets through the service chain, want at least 5", d)
	}
}

// TestProcessRunsAsItsUID: a command with a UID runs as that user and group, still in its pod.
func TestProcessRunsAsItsUID(t *testing.T) {
	_, c := newLab(t, clusters.Spec{Nodes: 1, Pods: []clusters.PodSpec{pod("a", "n1", nil)}})
	var out strings.Builder
	p, err := c.Start(context.Background(), "a", clusters.Command{Name: "id", Argv: []string{"sh", "-c", "id -u; id -g"}, Stdout: &out, UID: 1337})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(out.String()); len(got) != 2 || got[0] != "1337" || got[1] != "1337" {
		t.Errorf("uid and gid %q, want 1337 1337", out.String())
	}
}

// TestContainerHasItsOwnCgroup: a command with a Container runs in the pod's network namespace
// but in a cgroup of its own beside the pod's, which CPUTargets reports as that component.
func TestContainerHasItsOwnCgroup(t *testing.T) {
	_, c := newLab(t, clusters.Spec{Nodes: 1, Pods: []clusters.PodSpec{pod("a", "n1", nil)}})
	var out strings.Builder
	p, err := c.Start(context.Background(), "a", clusters.Command{Name: "id", Container: "sidecar",
		Argv: []string{"sh", "-c", "stat -L -c %i /proc/self/ns/net; cat /proc/self/cgroup"}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(out.String())
	a, _ := c.Pod("a")
	var podNs syscall.Stat_t
	if err := syscall.Stat(c.NetnsPath("a"), &podNs); err != nil {
		t.Fatal(err)
	}
	if len(lines) < 2 || lines[0] != strconv.FormatUint(podNs.Ino, 10) {
		t.Errorf("netns inode %q, want the pod's %d", out.String(), podNs.Ino)
	}
	want := a.Cgroup + ".sidecar"
	if len(lines) < 2 || filepath.Join(c.p.CgroupRoot, strings.TrimPrefix(lines[len(lines)-1], "0::")) != want {
		t.Errorf("cgroup %q, want %s", out.String(), want)
	}
	var found bool
	for _, tg := range c.CPUTargets() {
		if tg.Path == want {
			found = true
			if tg.Component != "sidecar" || tg.Name != "a/sidecar" || tg.Node != "n1" {
				t.Errorf("CPU target %+v, want component sidecar, name a/sidecar on n1", tg)
			}
		}
		if tg.Path == a.Cgroup && tg.Component == "sidecar" {
			t.Errorf("the pod's own cgroup is reported as the sidecar: %+v", tg)
		}
	}
	if !found {
		t.Errorf("CPUTargets does not list %s: %+v", want, c.CPUTargets())
	}
	if _, err := c.Start(context.Background(), "a", clusters.Command{Name: "x", Container: "../x", Argv: []string{"true"}}); err == nil {
		t.Error("a container name with a path in it was accepted")
	}
	if err := c.DeletePod(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(want); !os.IsNotExist(err) {
		t.Errorf("the container cgroup outlived its pod: %v", err)
	}
}

// TestReusedPodIPWorksAtOnce: a new pod that gets a deleted pod's IP reaches a service at once,
// even though the server only ever answered the old pod (DNATed traffic: the server never ARPs
// for its client, so a stale neighbour entry would black-hole replies for seconds).
func TestReusedPodIPWorksAtOnce(t *testing.T) {
	app := map[string]string{"app": "web"}
	spec := clusters.Spec{Nodes: 1,
		Pods: []clusters.PodSpec{pod("web-1", "n1", app), pod("old", "n1", nil)},
		Services: []clusters.ServiceDef{{Name: "web", Selector: app,
			Ports: []clusters.ServicePort{{Name: "tcp", Port: 80, TargetPort: 7000}}}},
	}
	_, c := newLab(t, spec)
	serve(t, c, "web-1", ":7000", nil)
	svc, _ := c.Services().Snapshot().Service("default", "web")
	vip := net.JoinHostPort(svc.ClusterIPs[0].String(), "80")
	ask(t, c, "old", vip)
	old, _ := c.Pod("old")
	if err := c.DeletePod(context.Background(), "old"); err != nil {
		t.Fatal(err)
	}
	p, err := c.CreatePod(context.Background(), pod("new", "n1", nil))
	if err != nil {
		t.Fatal(err)
	}
	if p.IPs[0] != old.IPs[0] {
		t.Fatalf("new pod got %v, want the deleted pod's %v (the test needs the IP reused)", p.IPs[0], old.IPs[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn, err := c.Dial(ctx, "new", "tcp", vip)
	if err != nil {
		t.Fatalf("new pod with a reused IP cannot reach the service within 1s: %v", err)
	}
	conn.Close()
}
