package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/bpf"
	"github.com/onehop-mesh/onehop/clusters/controlplane"
	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/enrollment"
	"github.com/onehop-mesh/onehop/dataplane/kube"
	"github.com/onehop-mesh/onehop/internal/kubetest"
	"github.com/onehop-mesh/onehop/internal/testbin"
)

func TestKubeRESTConfigSaysWhatToSet(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	_, err := kube.RESTConfig("")
	if err == nil || !strings.Contains(err.Error(), "--kubeconfig") || !strings.Contains(err.Error(), "in a pod") {
		t.Errorf("no in-cluster config, no kubeconfig: %v, want an error naming both ways", err)
	}
	if _, err := kube.RESTConfig(filepath.Join(t.TempDir(), "none")); err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("a missing kubeconfig: %v", err)
	}
	c, err := parseFlags([]string{"--node-id", "n1", "--kubernetes", "--kubeconfig", "/k", "--proc", "/host/proc"})
	if err != nil || !c.kube.on || c.kube.kubeconfig != "/k" || c.kube.procRoot != "/host/proc" {
		t.Errorf("flags: %+v, %v", c.kube, err)
	}
	t.Setenv("ONEHOP_KUBERNETES", "true")
	if c, err = parseFlags([]string{"--node-id", "n1"}); err != nil || !c.kube.on || c.kube.procRoot != "/proc" {
		t.Errorf("ONEHOP_KUBERNETES: %+v, %v", c.kube, err)
	}
	if _, err = parseFlags([]string{"--node-id", "n1", "--admin-socket", ""}); err == nil || !strings.Contains(err.Error(), "--state-file") {
		t.Errorf("kubernetes mode without a state file: %v", err)
	}
}

// kubeNode is one node for the agent under test: its own cgroup (the agent's --cgroup, with the
// kubelet's kubepods tree below it), bpffs, xDS control plane and admin socket. Everything
// carries a prefix of this test process, and cleanup removes only that.
type kubeNode struct {
	prefix, name, dir, cgroup, bpffs, sock, xds, bin string
	kubeconfig                                       string
	agents                                           int
}

var nodes int

func newKubeNode(t *testing.T) *kubeNode {
	t.Helper()
	testbin.RequireRoot(t)
	cgRoot, err := cpu.CgroupRoot()
	if err != nil {
		t.Skipf("no cgroup v2: %v", err)
	}
	bin := filepath.Join(filepath.Dir(testbin.Onehop(t)), "onehop-agent")
	nodes++ // tests of one process get prefixes of their own
	n := &kubeNode{prefix: fmt.Sprintf("ohkt%d%c", os.Getpid(), 'a'+nodes), bin: bin}
	n.name = n.prefix + "-node"
	n.dir = filepath.Join("/run", n.prefix)
	n.cgroup = filepath.Join(cgRoot, n.prefix)
	n.bpffs = filepath.Join(n.dir, "bpf")
	n.sock = filepath.Join(n.dir, "agent.sock")
	if err := os.Mkdir(n.cgroup, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroupTree(t, n.cgroup) })
	if err := os.MkdirAll(n.bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", n.bpffs, "bpf", 0, "mode=700"); err != nil {
		t.Fatalf("mount a bpffs of the test's own at %s: %v", n.bpffs, err)
	}
	t.Cleanup(func() {
		// Detach what the agents pinned, then drop the bpffs (registered after the cgroup's
		// cleanup, so it runs before it: the agent checks the cgroup is left clean).
		if out, err := exec.Command(n.bin, "--uninstall", "--bpffs", filepath.Join(n.bpffs, "onehop"), "--cgroup", n.cgroup).CombinedOutput(); err != nil {
			t.Errorf("onehop-agent --uninstall: %v\n%s", err, out)
		}
		unix.Unmount(n.bpffs, unix.MNT_DETACH)
		os.RemoveAll(n.dir)
	})
	// An empty control plane: the agent's xDS side gets ready, so /readyz waits on Kubernetes.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.xds = l.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controlplane.New(services.New(netip.MustParsePrefix("10.96.0.0/16")), controlplane.Options{}).Serve(ctx, l)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return n
}

// removeCgroupTree kills what the test left in dir and removes it, deepest first.
func removeCgroupTree(t *testing.T, dir string) {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("cgroup.kill %s: %v", dir, err)
	}
	var dirs []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	deadline := time.Now().Add(10 * time.Second)
	for i := len(dirs) - 1; i >= 0; i-- {
		for os.Remove(dirs[i]) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // killed processes leave the cgroup as they are reaped
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("cgroup %s not removed", dir)
	}
}

// agentProc is a running onehop-agent.
type agentProc struct {
	cmd *exec.Cmd
	log string
}

func (n *kubeNode) startAgent(t *testing.T, kubeconfig string, extra ...string) *agentProc {
	t.Helper()
	n.agents++
	logPath := filepath.Join(n.dir, fmt.Sprintf("agent-%d.log", n.agents))
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(n.bin, "--node-id", n.name, "--kubernetes", "--kubeconfig", kubeconfig, "--proc", "/proc",
		"--cgroup", n.cgroup, "--bpffs", filepath.Join(n.bpffs, "onehop"), "--admin-socket", n.sock,
		"--metrics-address", "", "--xds-address", n.xds, "--log-level", "debug")
	cmd.Args = append(cmd.Args, extra...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, log: logPath}
	t.Cleanup(func() {
		a.kill()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s:\n%s", logPath, b)
		}
	})
	return a
}

// kill is SIGKILL: nothing of the agent's own shutdown runs.
func (a *agentProc) kill() {
	if a.cmd.ProcessState == nil {
		a.cmd.Process.Kill()
		a.cmd.Wait()
	}
}

func (n *kubeNode) get(path string) (int, []byte, error) {
	resp, err := agent.Client(n.sock).Get("http://agent" + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func (n *kubeNode) waitReady(t *testing.T, a *agentProc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, _, _ := n.get("/readyz")
		if code == http.StatusOK {
			return
		}
		if a.cmd.ProcessState != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(a.log)
			t.Fatalf("agent not ready (/readyz %d):\n%s", code, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kernelEnrolled reads the agent's pinned oh_enrolled: what the kernel acts on, agent or not.
func (n *kubeNode) kernelEnrolled(t *testing.T) map[uint64]uint8 {
	t.Helper()
	m, err := n.readEnrolled()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (n *kubeNode) readEnrolled() (map[uint64]uint8, error) {
	path := filepath.Join(n.bpffs, "onehop", fmt.Sprintf("v%d", datapath.LayoutVersion), "maps", bpf.OnehopMapOhEnrolled)
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("pinned %s: %w", path, err)
	}
	defer m.Close()
	out := map[uint64]uint8{}
	var (
		k uint64
		v uint8
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}

// testPod is a pod object with real processes: a network namespace of its own, and sleep
// processes in a cgroup named as the kubelet names it (cgroupfs driver) below the node's.
type testPod struct {
	name, ns, node string
	labels         map[string]string
	uid            types.UID
	netns          string // ip netns name
	cookie         uint64
	procs          []*exec.Cmd
}

func (n *kubeNode) createPod(t *testing.T, c kubernetes.Interface, p *testPod) {
	t.Helper()
	ctx := context.Background()
	obj, err := c.CoreV1().Pods(p.ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns, Labels: p.labels},
		Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/app:1"}},
			TerminationGracePeriodSeconds: new(int64)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.uid = obj.UID
	// No kubelet: the test says the sandbox runs, before its processes exist (the agent must
	// retry until it finds them).
	obj.Status.Phase = corev1.PodRunning
	if _, err := c.CoreV1().Pods(p.ns).UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	p.netns = fmt.Sprintf("%s-%s-%s", n.prefix, p.ns[len(n.prefix)+1:], p.name)
	if out, err := exec.Command("ip", "netns", "add", p.netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", p.netns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", p.netns).Run() })
	if p.cookie, err = enrollment.Cookie("/run/netns/" + p.netns); err != nil {
		t.Fatal(err)
	}
	// The pause container first (the lowest pid, the one the agent names), then the app's.
	for _, cid := range []string{"pause0", "app0"} {
		cg := filepath.Join(n.cgroup, "kubepods", "besteffort", "pod"+string(p.uid), cid)
		if err := os.MkdirAll(cg, 0o755); err != nil {
			t.Fatal(err)
		}
		// Into the pod's cgroup only once it is in the pod's netns, as a container runtime does:
		// placed at clone time, nsenter would sit in the cgroup in the host's netns for a moment,
		// and an agent looking then would enroll the host's.
		cmd := exec.Command("nsenter", "--net=/run/netns/"+p.netns, "--", "sleep", "3600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s of pod %s: %v", cid, p.name, err)
		}
		p.procs = append(p.procs, cmd)
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			if c, err := enrollment.Cookie(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)); err == nil && c == p.cookie {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s of pod %s never entered its netns", cid, p.name)
			}
		}
		if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			t.Fatalf("move %s of pod %s into %s: %v", cid, p.name, cg, err)
		}
	}
}

func (n *kubeNode) cookies(pods []*testPod) map[uint64]string {
	out := map[uint64]string{}
	for _, p := range pods {
		out[p.cookie] = p.ns[len(n.prefix)+1:] + "/" + p.name
	}
	return out
}

// enrolledPods is which of pods are enrolled: in the kernel's map (flags by pod) and through
// GET /enroll, whose netns paths are resolved to cookies. Unknown cookies are reported too.
func (n *kubeNode) enrolledPods(t *testing.T, pods []*testPod, viaAPI bool) (kernel map[string]uint8, api []string) {
	byCookie := n.cookies(pods)
	kernel = map[string]uint8{}
	for c, f := range n.kernelEnrolled(t) {
		kernel[cmpOr(byCookie[c], fmt.Sprintf("unknown cookie %d", c))] = f
	}
	if !viaAPI {
		return kernel, nil
	}
	code, body, err := n.get("/enroll")
	var paths []string
	if err != nil || code != http.StatusOK || json.Unmarshal(body, &paths) != nil {
		return kernel, []string{fmt.Sprintf("GET /enroll: %d %s %v", code, body, err)}
	}
	for _, p := range paths {
		c, err := enrollment.Cookie(p)
		if err != nil {
			api = append(api, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		api = append(api, cmpOr(byCookie[c], fmt.Sprintf("unknown cookie %d", c)))
	}
	sort.Strings(api)
	return kernel, api
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// expect waits until exactly want (namespace suffix/pod) are enrolled, in the kernel and by
// the agent's API.
func (n *kubeNode) expect(t *testing.T, step string, pods []*testPod, want ...string) map[string]uint8 {
	t.Helper()
	sort.Strings(want)
	deadline := time.Now().Add(30 * time.Second)
	for {
		kernel, api := n.enrolledPods(t, pods, true)
		var got []string
		for p := range kernel {
			got = append(got, p)
		}
		sort.Strings(got)
		if slices.Equal(got, want) && slices.Equal(api, want) {
			t.Logf("%s: enrolled %v", step, want)
			return kernel
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: kernel has %v, GET /enroll %v; want %v", step, got, api, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKubernetesMode runs the real agent in Kubernetes mode against a real kube-apiserver and
// etcd, with pods whose processes, network namespaces and cgroups are real, and checks what
// the kernel's enrollment map holds as labels, pods and the agent come and go.
func TestKubernetesMode(t *testing.T) {
	n := newKubeNode(t)
	env := kubetest.Start(t)
	c := env.Client
	ctx := context.Background()
	nsA, nsB := n.prefix+"-a", n.prefix+"-b"
	onehop := map[string]string{kube.ModeLabel: kube.Mode}
	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: nsA, Labels: onehop}},
		{ObjectMeta: metav1.ObjectMeta{Name: nsB}},
	} {
		if _, err := c.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a := n.startAgent(t, env.Kubeconfig)
	n.waitReady(t, a)
	pods := []*testPod{
		{name: "a1", ns: nsA, node: n.name},                                                    // its namespace's label
		{name: "a2", ns: nsA, node: n.name, labels: map[string]string{kube.ModeLabel: "none"}}, // opts out
		{name: "o1", ns: nsA, node: n.prefix + "-other"},                                       // another node's
		{name: "b1", ns: nsB, node: n.name, labels: onehop},                                    // its own label
		{name: "b2", ns: nsB, node: n.name},                                                    // no label anywhere
	}
	for _, p := range pods {
		n.createPod(t, c, p)
	}
	byName := map[string]*testPod{}
	for _, p := range pods {
		byName[p.name] = p
	}
	n.expect(t, "labels", pods, "a/a1", "b/b1")

	setPodLabels := func(p *testPod, labels map[string]string) {
		t.Helper()
		obj, err := c.CoreV1().Pods(p.ns).Get(ctx, p.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Labels = labels
		if _, err := c.CoreV1().Pods(p.ns).Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setNsLabels := func(name string, labels map[string]string) {
		t.Helper()
		obj, err := c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Labels = labels
		if _, err := c.CoreV1().Namespaces().Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setPodLabels(byName["b1"], nil)
	n.expect(t, "pod label removed", pods, "a/a1")
	setNsLabels(nsB, map[string]string{kube.ModeLabel: kube.Mode, kube.TelemetryLabel: "off"})
	n.expect(t, "namespace labelled", pods, "a/a1", "b/b1", "b/b2")
	setNsLabels(nsA, nil)
	n.expect(t, "namespace label removed", pods, "b/b1", "b/b2")
	setNsLabels(nsA, onehop)
	n.expect(t, "namespace labelled again", pods, "a/a1", "b/b1", "b/b2")
	if err := c.CoreV1().Pods(nsA).Delete(ctx, "a1", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	n.expect(t, "pod deleted", pods, "b/b1", "b/b2")
	setPodLabels(byName["b1"], map[string]string{kube.ModeLabel: kube.Mode, kube.TelemetryLabel: "access-log"})
	balance := uint8(bpf.OnehopOhNetnsFlagOH_NETNS_BALANCE)
	all := balance | uint8(bpf.OnehopOhNetnsFlagOH_NETNS_TELEMETRY) | uint8(bpf.OnehopOhNetnsFlagOH_NETNS_ACCESS_LOG)
	deadline := time.Now().Add(30 * time.Second)
	for {
		kernel := n.expect(t, "telemetry labels", pods, "b/b1", "b/b2")
		if kernel["b/b1"] == all && kernel["b/b2"] == balance {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("enrollment flags %v: want b1 %d (access-log, its label), b2 %d (off, its namespace's)", kernel, all, balance)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The state file has the pods' metadata for telemetry and the marks of Kubernetes mode.
	var state []agent.Enrollment
	b, err := os.ReadFile(strings.TrimSuffix(n.sock, ".sock") + ".enrolled.json")
	if err == nil {
		err = json.Unmarshal(b, &state)
	}
	if err != nil || len(state) != 2 {
		t.Fatalf("state file: %v %s", err, b)
	}
	for _, e := range state {
		if e.Pod == nil || e.Pod.Namespace != nsB || !strings.HasPrefix(e.Owner, "kubernetes:"+nsB+"/b") {
			t.Errorf("state file entry %+v", e)
		}
	}

	// SIGKILL the agent; meanwhile nsB loses its label: b2 (by the namespace) must go when
	// the next agent re-syncs, b1 (its own label) stay, untouched throughout.
	a.kill()
	setNsLabels(nsB, nil)
	if k, _ := n.enrolledPods(t, pods, false); len(k) != 2 {
		t.Fatalf("with the agent dead the kernel holds %v, want b1 and b2 still", k)
	}
	var gaps atomic.Int64
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() { // b1 must never leave the kernel's map
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if m, err := n.readEnrolled(); err != nil || m[byName["b1"].cookie] == 0 {
				gaps.Add(1)
			}
		}
	}()
	a2 := n.startAgent(t, env.Kubeconfig)
	n.waitReady(t, a2)
	n.expect(t, "restarted with b's label removed", pods, "b/b1")
	close(stop)
	<-watched
	if g := gaps.Load(); g > 0 {
		t.Errorf("b1 was missing from the kernel's map %d times across the restart", g)
	}
	log2, _ := os.ReadFile(a2.log)
	for _, line := range strings.Split(string(log2), "\n") {
		if strings.Contains(line, "msg=enrollment") && strings.Contains(line, fmt.Sprintf(" cookie=%d ", byName["b1"].cookie)) {
			t.Errorf("the restarted agent re-enrolled b1, which stayed enrolled: %s", line)
		}
	}
	if !strings.Contains(string(log2), "restored the previous agent's enrollments") {
		t.Errorf("the restarted agent did not restore the enrollments:\n%s", log2)
	}
	if k, _ := n.enrolledPods(t, pods, false); k["b/b1"] != all {
		t.Errorf("b1's flags after the restart: %v", k)
	}
}

// /readyz waits for the Kubernetes side: with an API server that does not answer, the agent is
// healthy and its xDS side ready, but it is not.
func TestKubernetesModeNotReadyWithoutAPIServer(t *testing.T) {
	n := newKubeNode(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	kc := filepath.Join(n.dir, "kubeconfig")
	os.WriteFile(kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://%s", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, addr)), 0o600)
	a := n.startAgent(t, kc)
	// Wait until the xDS side has programmed its config (it alone would make the agent ready).
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, _ := os.ReadFile(a.log)
		if strings.Contains(string(b), "msg=programmed") {
			break
		}
		if a.cmd.ProcessState != nil || time.Now().After(deadline) {
			t.Fatalf("the xDS side never programmed:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for range 20 {
		if code, _, _ := n.get("/healthz"); code != http.StatusOK {
			t.Fatalf("/healthz %d", code)
		}
		if code, body, _ := n.get("/readyz"); code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz %d %s without ever listing the node's pods", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop is SIGTERM, and waits for the agent to exit.
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- a.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			b, _ := os.ReadFile(a.log)
			t.Fatalf("agent exited with %v:\n%s", err, b)
		}
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		t.Fatal("agent did not stop within 30 s of SIGTERM")
	}
}

// --uninstall-on-delete: a stopping agent keeps its pins while its DaemonSet stands (a restart,
// a rolling update) and removes them, on its node, once the DaemonSet is deleted (helm
// uninstall). The DaemonSet and the agent's pod are real API objects; there is no controller
// manager, so the pod outlives its owner as it does between helm's delete and the garbage
// collector's.
func TestKubernetesModeUninstallOnDelete(t *testing.T) {
	n := newKubeNode(t)
	env := kubetest.Start(t)
	c := env.Client
	ctx := context.Background()
	ns := n.prefix + "-system"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sel := map[string]string{"app": "onehop-agent"}
	ds, err := c.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "onehop-agent"},
		Spec: appsv1.DaemonSetSpec{Selector: &metav1.LabelSelector{MatchLabels: sel},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: sel},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "onehop.local/onehop-agent:test"}}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctrl := true
	if _, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "onehop-agent-x1", Labels: sel, OwnerReferences: []metav1.OwnerReference{{
			APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: &ctrl}}},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "agent", Image: "onehop.local/onehop-agent:test"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--uninstall-on-delete", "--pod-name", "onehop-agent-x1", "--pod-namespace", ns}
	pins := filepath.Join(n.bpffs, "onehop", fmt.Sprintf("v%d", datapath.LayoutVersion))

	a := n.startAgent(t, env.Kubeconfig, args...)
	n.waitReady(t, a)
	a.stop(t)
	if _, err := n.readEnrolled(); err != nil {
		t.Fatalf("the DaemonSet stands, yet the stopped agent's pins are gone: %v", err)
	}
	if left, err := datapath.AttachedPrograms(n.cgroup); err != nil || len(left) == 0 {
		t.Fatalf("the DaemonSet stands, yet nothing stays attached to the node's cgroup: %v %v", left, err)
	}

	a = n.startAgent(t, env.Kubeconfig, args...)
	n.waitReady(t, a)
	if err := c.AppsV1().DaemonSets(ns).Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// The watch sees it before the agent is stopped, as the garbage collector would stop it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(a.log)
		if strings.Contains(string(b), "the agent's DaemonSet is deleted") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never saw its DaemonSet deleted:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	a.stop(t)
	if _, err := os.Stat(pins); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after the DaemonSet's deletion the agent left its pins at %s (%v)", pins, err)
	}
	if left, err := datapath.AttachedPrograms(n.cgroup); err != nil || len(left) > 0 {
		t.Errorf("after the DaemonSet's deletion onehop programs stay attached: %v %v", left, err)
	}
	if b, _ := os.ReadFile(a.log); !strings.Contains(string(b), "msg=uninstalled") {
		t.Errorf("no uninstall in the agent's log:\n%s", b)
	}
	// A flag without Kubernetes mode is refused, not ignored.
	if _, err := parseFlags([]string{"--node-id", "n1", "--uninstall-on-delete"}); err == nil || !strings.Contains(err.Error(), "--kubernetes") {
		t.Errorf("--uninstall-on-delete without --kubernetes: %v", err)
	}
}
