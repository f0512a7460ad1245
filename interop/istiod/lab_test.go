package istiod

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/internal/testbin"
)

// lab is a netns lab whose pods serve their names: every accepted connection gets the pod's
// name and a newline, then is closed (as clusters/netns's own tests serve).
type lab struct {
	c   *netns.Cluster
	bin string // the onehop executable; onehop-agent is beside it

	mu   sync.Mutex
	hits map[string]int // "pod:port" -> accepted connections
}

// newLab brings up a uniquely named two-node lab with pods only (no services in the lab's own
// store: every service comes from istiod) and starts each pod's listeners. Everything is
// removed when the test ends, pass or fail.
func newLab(t *testing.T, pods []podDef) *lab {
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
	name := fmt.Sprintf("is%x", b)
	t.Cleanup(func() {
		if err := p.Down(context.Background(), name); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	spec := clusters.Spec{Name: name, Nodes: 2}
	seenNS := map[string]bool{"default": true}
	for _, pd := range pods {
		if !seenNS[pd.Namespace] {
			seenNS[pd.Namespace] = true
			spec.Namespaces = append(spec.Namespaces, clusters.Namespace{Name: pd.Namespace})
		}
		spec.Pods = append(spec.Pods, clusters.PodSpec{Name: pd.Name, Namespace: pd.Namespace, Node: pd.Node, Labels: pd.Labels})
	}
	start := time.Now()
	c, err := p.Up(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := writeOwner(c.(*netns.Cluster)); err != nil {
		t.Fatal(err)
	}
	t.Logf("lab %s up with %d pods in %v", name, len(pods), time.Since(start).Round(time.Millisecond))
	l := &lab{c: c.(*netns.Cluster), bin: bin, hits: map[string]int{}}
	for _, pd := range pods {
		for _, port := range pd.Serve {
			l.serve(t, pd.Name, port)
		}
	}
	return l
}

// ownerFile, in a lab's runtime directory, names the test process that made the lab.
const ownerFile = "interop-istiod.owner"

// labName is how these tests name their labs.
var labName = regexp.MustCompile(`^is[0-9a-f]{8}$`)

// writeOwner records this process (pid and start time) as the lab's owner.
func writeOwner(c *netns.Cluster) error {
	start, err := procStart(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.RuntimeDir(), ownerFile), []byte(fmt.Sprintf("%d %s\n", os.Getpid(), start)), 0o644)
}

// procStart is a process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat),
// which tells a live process from a later one with the same pid.
func procStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	if i < 0 {
		return "", fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	return f[19], nil
}

// sweepLeftovers removes the labs an earlier run of these tests left behind when it was killed
// before its cleanups ran (a test binary timing out panics past t.Cleanup): labs named like
// ours whose owner process is gone. Labs of a run still going are left alone.
func sweepLeftovers() {
	p, err := netns.New()
	if err != nil {
		return
	}
	dirs, _ := os.ReadDir(p.StateDir)
	for _, d := range dirs {
		if !d.IsDir() || !labName.MatchString(d.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(p.StateDir, d.Name(), ownerFile))
		if err != nil {
			continue // not one of ours, or still coming up
		}
		var pid int
		var start string
		fmt.Sscan(string(b), &pid, &start)
		if now, err := procStart(pid); err == nil && now == start {
			continue
		}
		if err := p.Down(context.Background(), d.Name()); err != nil {
			fmt.Fprintf(os.Stderr, "remove lab %s left by killed test process %d: %v\n", d.Name(), pid, err)
		} else {
			fmt.Fprintf(os.Stderr, "removed lab %s left by killed test process %d\n", d.Name(), pid)
		}
	}
}

// ip is a lab pod's IP; a pod missing is a bug in the fixture table.
func (l *lab) ip(name string) string {
	p, ok := l.c.Pod(name)
	if !ok {
		panic("no pod " + name + " in the lab")
	}
	return p.IPs[0].String()
}

// serve accepts TCP connections on port in a pod and answers each with the pod's name.
func (l *lab) serve(t *testing.T, pod string, port int) {
	t.Helper()
	ln, err := l.c.Listen(pod, "tcp", ":"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	key := pod + ":" + strconv.Itoa(port)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			l.mu.Lock()
			l.hits[key]++
			l.mu.Unlock()
			go func() {
				defer conn.Close()
				io.WriteString(conn, pod+"\n")
			}()
		}
	}()
}

// hitsOf returns the accepted connections per pod:port so far.
func (l *lab) hitsOf() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.hits))
	for k, v := range l.hits {
		out[k] = v
	}
	return out
}

// connectResult is what `onehop workload connect` prints (cmd/onehop/workload.go).
type connectResult struct {
	Target          string            `json:"target"`
	Count           int               `json:"count"`
	OK              int               `json:"ok"`
	Answers         map[string]int    `json:"answers"`
	Sequence        []string          `json:"sequence"`
	Peers           []string          `json:"peers"`
	Errors          map[string]int    `json:"errors"`
	ErrorSamples    map[string]string `json:"error_samples"`
	MaxFailedDialMs float64           `json:"max_failed_dial_ms"`
	MaxDialMs       float64           `json:"max_dial_ms"`
}

func (r connectResult) failed() int {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func (r connectResult) String() string {
	var answers []string
	for k, v := range r.Answers {
		answers = append(answers, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(answers)
	s := fmt.Sprintf("%s x%d: ok %d %v peers %v", r.Target, r.Count, r.OK, answers, r.Peers)
	if r.failed() > 0 {
		s += fmt.Sprintf(" errors %v (max failed dial %.1f ms) %v", r.Errors, r.MaxFailedDialMs, r.ErrorSamples)
	}
	return s
}

// connect runs `onehop workload connect` in a pod: a real process in the pod's network namespace
// and cgroup, where the agent's programs apply (the test process is in neither).
func (l *lab) connect(t testing.TB, from, target string, count int, timeout time.Duration) connectResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count)*2*timeout+30*time.Second)
	defer cancel()
	var out bytes.Buffer
	proc, err := l.c.Start(ctx, from, clusters.Command{Name: "connect", Stdout: &out,
		Argv: []string{l.bin, "workload", "connect", "--target", target, "--count", strconv.Itoa(count), "--timeout", timeout.String()}})
	if err != nil {
		t.Fatal(err)
	}
	if err := proc.Wait(); err != nil {
		t.Fatalf("connect %s from %s: %v; stdout %q; log:\n%s", target, from, err, out.String(), proc.LogTail(2000))
	}
	var r connectResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("connect %s from %s: %v in %q", target, from, err, out.String())
	}
	return r
}

// agent is a running onehop-agent, in the host's network namespace (it reaches the fake istiod
// on 127.0.0.1) and attached to one lab node's cgroup.
type agent struct {
	cmd    *exec.Cmd
	sock   string
	log    string // its stderr and stdout
	exited chan struct{}
	http   *http.Client
}

// agentMode is how the agent talks to istiod.
type agentMode struct {
	name      string
	xdsMode   string // envoy or workload
	proxyType string // sidecar or ztunnel
	delta     bool
}

func (m agentMode) workload() bool { return m.xdsMode == "workload" }

var (
	sidecarSotW  = agentMode{name: "sidecar-sotw", xdsMode: "envoy", proxyType: "sidecar"}
	sidecarDelta = agentMode{name: "sidecar-delta", xdsMode: "envoy", proxyType: "sidecar", delta: true}
	workloadAPI  = agentMode{name: "workload", xdsMode: "workload", proxyType: "ztunnel", delta: true}
)

// startAgent runs the real agent binary for node, stops it when the test ends and, if the test
// failed, puts its log in the test log.
func startAgent(t *testing.T, l *lab, node, xdsAddr string, m agentMode) *agent {
	t.Helper()
	dir := t.TempDir()
	a := &agent{sock: filepath.Join(dir, "agent.sock"), log: filepath.Join(dir, "agent.log"), exited: make(chan struct{})}
	a.http = unixClient(a.sock)
	args := []string{
		"--bpffs", "",
		"--cgroup", l.c.NodeCgroup(node),
		"--admin-socket", a.sock,
		"--metrics-address", "",
		"--xds-address", xdsAddr,
		"--node-id", node,
		"--cluster-id", "Kubernetes",
		"--node-ip", l.c.NodeAddresses(node)[0].String(),
		"--xds-mode", m.xdsMode,
		"--proxy-type", m.proxyType,
	}
	if m.delta {
		args = append(args, "--delta")
	}
	logf, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	// The agent runs in the host's network namespace but in a cgroup of the lab's (not under the
	// node's, whose programs it attaches): if this test process is killed before its cleanup,
	// removing the lab (sweepLeftovers, or `onehop cluster down`) still ends the agent.
	cg := filepath.Join(filepath.Dir(l.c.NodeCgroup(node)), "interop-agent-"+node)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	cgfd, err := os.Open(cg)
	if err != nil {
		t.Fatal(err)
	}
	a.cmd = exec.Command(l.bin+"-agent", args...)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgfd.Fd())}
	err = a.cmd.Start()
	logf.Close()
	cgfd.Close()
	if err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); close(a.exited) }()
	t.Logf("agent: %s %s", filepath.Base(a.cmd.Path), strings.Join(args, " "))
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(10 * time.Second):
			a.cmd.Process.Kill()
			<-a.exited
			t.Errorf("agent did not exit within 10s of SIGTERM; killed")
		}
		if t.Failed() {
			t.Logf("agent log (%s):\n%s", m.name, a.tail(64<<10))
		}
	})
	return a
}

// tail returns the last n bytes of the agent's log.
func (a *agent) tail(n int) string {
	b, _ := os.ReadFile(a.log)
	if len(b) > n {
		b = append([]byte("...\n"), b[len(b)-n:]...)
	}
	return string(b)
}

func unixClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
}

// do sends one request to the admin socket and returns the status code and body.
func (a *agent) do(method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://agent"+path, rd)
	resp, err := a.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// services returns GET /services decoded: every service of the agent's config, programmed or
// not, and why.
func (a *agent) services() ([]map[string]any, error) {
	code, b, err := a.do(http.MethodGet, "/services", nil)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET /services: %d %s", code, bytes.TrimSpace(b))
	}
	var out []map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("GET /services: %w", err)
	}
	return out, nil
}

// status returns GET /status decoded, and its raw body.
func (a *agent) status() (map[string]any, []byte, error) {
	code, b, err := a.do(http.MethodGet, "/status", nil)
	if err != nil {
		return nil, nil, err
	}
	if code != http.StatusOK {
		return nil, b, fmt.Errorf("GET /status: %d %s", code, bytes.TrimSpace(b))
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, b, fmt.Errorf("GET /status: %w", err)
	}
	return m, b, nil
}

// waitUp waits for the admin socket to answer /healthz.
func (a *agent) waitUp(t *testing.T, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		code, body, err := a.do(http.MethodGet, "/healthz", nil)
		if err == nil && code == http.StatusOK {
			return
		}
		select {
		case <-a.exited:
			t.Fatalf("agent exited (%v) before its admin socket answered; log:\n%s", a.cmd.ProcessState, a.tail(16<<10))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent admin socket did not answer /healthz within %v (last: %d %s %v); log:\n%s", within, code, body, err, a.tail(16<<10))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// enroll asks the agent to serve a pod's connections.
func (a *agent) enroll(t *testing.T, netnsPath string) {
	t.Helper()
	code, body, err := a.do(http.MethodPost, "/enroll", map[string]string{"netns": netnsPath})
	if err != nil || code != http.StatusOK {
		t.Fatalf("enroll %s: %d %s %v; log:\n%s", netnsPath, code, bytes.TrimSpace(body), err, a.tail(8<<10))
	}
}

// waitReady waits for /readyz 200: the agent's first complete config is programmed. onFail,
// when set, runs before the test fails (to log the control plane's side).
func (a *agent) waitReady(t *testing.T, within time.Duration, onFail func()) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		code, body, err := a.do(http.MethodGet, "/readyz", nil)
		if err == nil && code == http.StatusOK {
			return time.Since(start)
		}
		select {
		case <-a.exited:
			t.Fatalf("agent exited (%v) before it was ready; log:\n%s", a.cmd.ProcessState, a.tail(32<<10))
		default:
		}
		if time.Since(start) > within {
			if onFail != nil {
				onFail()
			}
			_, st, serr := a.status()
			t.Fatalf("agent not ready within %v (last /readyz: %d %s %v); /status: %s %v; log:\n%s",
				within, code, bytes.TrimSpace(body), err, st, serr, a.tail(32<<10))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
