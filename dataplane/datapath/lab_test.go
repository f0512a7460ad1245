package datapath

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// The tests run against the real kernel: they load the programs, attach them to a cgroup they
// create, and run the client side in a child process (this test binary, see TestMain) placed in
// that cgroup at clone time. Client and backends live in a network namespace the test creates
// (loopback only, no routes), so an unbalanced connect to a VIP fails at once and never leaves
// the machine.

const (
	cgroupRoot = "/sys/fs/cgroup/unified"
	childEnv   = "ONEHOP_DPTEST_CLIENT" // set for the child: the clientJob to run, as JSON
)

func TestMain(m *testing.M) {
	if job := os.Getenv(childEnv); job != "" {
		os.Exit(runClient(job))
	}
	if job := os.Getenv(agentEnv); job != "" {
		os.Exit(runAgent(job))
	}
	if job := os.Getenv(sockmapEnv); job != "" {
		os.Exit(runSockmapChild(job))
	}
	os.Exit(m.Run())
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads BPF programs, creates a cgroup and a network namespace")
	}
}

// testOptions are small maps, so tests load fast.
var testOptions = Options{MaxServices: 64, MaxSlots: 4096, MaxConns: 1024, MaxNetns: 16}

// loadDatapath loads a datapath that t closes.
func loadDatapath(t testing.TB, opts Options) *Datapath {
	t.Helper()
	requireRoot(t)
	dp, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Error(err)
		}
	})
	return dp
}

// lab is one test's world: a cgroup with the datapath attached, a network namespace whose
// cookie is enrolled, and loopback backends in it.
type lab struct {
	t      testing.TB
	dp     *Datapath
	cgroup string
	netns  *netns
	cookie uint64 // of netns
	pinDir string // newPinnedLab's
	// netnsOptions: what newLab enrolls netns with.
	netnsOptions NetnsOptions
}

var attachTypes = []ebpf.AttachType{
	ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupInet6Connect,
	ebpf.AttachCgroupInet4GetPeername, ebpf.AttachCgroupInet6GetPeername, ebpf.AttachCGroupSockOps,
}

func newLab(t testing.TB, opts Options) *lab {
	t.Helper()
	l := newWorld(t)
	l.dp = loadDatapath(t, opts)
	if err := l.dp.Attach(l.cgroup); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Enrollment.Enroll(l.cookie, l.netnsOptions); err != nil {
		t.Fatal(err)
	}
	return l
}

// newWorld is a lab without a datapath: its cgroup and network namespace.
func newWorld(t testing.TB) *lab {
	t.Helper()
	requireRoot(t)
	l := &lab{t: t, cgroup: filepath.Join(cgroupRoot, fmt.Sprintf("onehop-dptest-%016x", rand.Uint64()))}
	if err := os.Mkdir(l.cgroup, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v (is cgroup2 mounted at %s?)", err, cgroupRoot)
	}
	t.Cleanup(l.removeCgroup)
	l.netns = newNetns(t)
	l.netns.run(func() { l.cookie, _ = netnsCookie() })
	if l.cookie == 0 {
		t.Fatal("could not read the test netns cookie (SO_NETNS_COOKIE, Linux 5.14)")
	}
	return l
}

// with returns l for use by t (a subtest or sub-benchmark).
func (l *lab) with(t testing.TB) *lab {
	c := *l
	c.t = t
	return &c
}

// removeCgroup checks nothing is still attached to the test cgroup (the datapath was closed
// before), then removes it once the children have left.
func (l *lab) removeCgroup() {
	if f, err := os.Open(l.cgroup); err == nil {
		for _, at := range attachTypes {
			res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
			if err != nil {
				l.t.Errorf("query %s programs of %s: %v", at, l.cgroup, err)
			} else if len(res.Programs) > 0 {
				l.t.Errorf("%d %s programs still attached to %s after Close", len(res.Programs), at, l.cgroup)
			}
		}
		f.Close()
	}
	var err error
	for range 50 {
		if err = os.Remove(l.cgroup); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	l.t.Errorf("remove test cgroup: %v", err)
}

func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
}

// netns is a new network namespace with loopback up, held by one locked OS thread that runs
// whatever must happen inside it (creating listeners, starting children).
type netns struct {
	do   chan func()
	done chan struct{}
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	n := &netns{do: make(chan func()), done: make(chan struct{})}
	errc := make(chan error)
	go func() {
		defer close(n.done)
		// Never unlocked: when this goroutine returns, its thread (still in the namespace) exits.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range n.do {
			f()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		close(n.do)
		<-n.done
	})
	return n
}

func (n *netns) run(f func()) {
	done := make(chan struct{})
	n.do <- func() {
		defer close(done)
		f()
	}
	<-done
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("read lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up in the test netns: %w", err)
	}
	return nil
}

// backend listens in the lab netns; every connection it accepts gets its name, then EOF.
type backend struct {
	name string
	addr netip.AddrPort
}

// backends starts one backend per address ("127.0.0.2", "::1", ...), each on a free port.
func (l *lab) backends(addrs ...string) []backend {
	l.t.Helper()
	out := make([]backend, len(addrs))
	for i, a := range addrs {
		var (
			ln  net.Listener
			err error
		)
		l.netns.run(func() { ln, err = net.Listen("tcp", net.JoinHostPort(a, "0")) })
		if err != nil {
			l.t.Fatalf("listen on %s in the test netns: %v", a, err)
		}
		l.t.Cleanup(func() { ln.Close() })
		b := backend{name: fmt.Sprintf("b%d", i), addr: ln.Addr().(*net.TCPAddr).AddrPort()}
		b.addr = netip.AddrPortFrom(b.addr.Addr().Unmap(), b.addr.Port())
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(b.name))
				c.Close()
			}
		}()
		out[i] = b
	}
	return out
}

// clientJob is what the child does; clientResult is one line of its output.
type clientJob struct {
	Target   string        `json:"target"`   // address to connect to
	Count    int           `json:"count"`    // connections to make (0: until Duration is over)
	Duration time.Duration `json:"duration"` // stop after this long (0: after Count)
	Hold     bool          `json:"hold"`     // keep each connection open until a line on stdin
	Bench    bool          `json:"bench"`    // per line "N" on stdin: N connect+close, report time
	Request  int           `json:"request"`  // bench: each connection sends this many bytes and reads their echo
	Until    bool          `json:"until"`    // connect until stdin closes
	Pause    time.Duration `json:"pause"`    // between connections
	Echo     bool          `json:"echo"`     // one connection; per line on stdin: send, read the echo
	Graceful bool          `json:"graceful"` // echo: at the end of stdin, close gracefully (not a reset)
	Serve    bool          `json:"serve"`    // listen on Target and echo each connection until EOF
}

type clientResult struct {
	Start   int64  `json:"start"` // CLOCK_MONOTONIC ns before connect()
	End     int64  `json:"end"`   // ... and after it returned
	Backend string `json:"backend,omitempty"`
	Peer    string `json:"peer,omitempty"` // getpeername
	Local   string `json:"local,omitempty"`
	Err     string `json:"err,omitempty"`
	Elapsed int64  `json:"elapsed,omitempty"` // bench: ns for the N connects
}

type child struct {
	cmd    *exec.Cmd
	stdin  *os.File
	lines  chan []byte // stdout, read as it comes: a full pipe would stall the child
	stderr bytes.Buffer
}

// childCmd is this test binary as a child that runs job (JSON in env), placed in the lab cgroup
// at clone time; start it inside l.netns.run, so that it inherits the lab's netns. done closes
// the cgroup's descriptor once it started.
func (l *lab) childCmd(env string, job any) (cmd *exec.Cmd, done func()) {
	l.t.Helper()
	spec, _ := json.Marshal(job)
	cg, err := os.Open(l.cgroup)
	if err != nil {
		l.t.Fatal(err)
	}
	cmd = exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), env+"="+string(spec))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	return cmd, func() { cg.Close() }
}

// start runs job in a child process placed in the lab cgroup (at clone time) and netns.
func (l *lab) start(job clientJob) *child {
	l.t.Helper()
	cmd, done := l.childCmd(childEnv, job)
	defer done()
	c := &child{cmd: cmd}
	c.cmd.Stderr = &c.stderr
	stdinR, stdinW, err := os.Pipe()
	if err != nil {
		l.t.Fatal(err)
	}
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	c.cmd.Stdin, c.stdin = stdinR, stdinW
	c.lines = make(chan []byte, 1<<16)
	go func() {
		defer close(c.lines)
		out := bufio.NewScanner(stdout)
		for out.Scan() {
			c.lines <- bytes.Clone(out.Bytes())
		}
	}()
	l.netns.run(func() { err = c.cmd.Start() }) // the child inherits the starting thread's netns
	stdinR.Close()
	if err != nil {
		l.t.Fatalf("start client child in %s: %v", l.cgroup, err)
	}
	l.t.Cleanup(func() {
		c.stdin.Close()
		c.cmd.Process.Kill()
		c.cmd.Wait()
	})
	return c
}

// next returns the child's next result; ok is false at the end of its output.
func (c *child) next(t testing.TB) (r clientResult, ok bool) {
	t.Helper()
	line, ok := <-c.lines
	if !ok {
		return r, false
	}
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("client child wrote %q: %v", line, err)
	}
	return r, true
}

// wait collects the rest of the child's results and checks it exited cleanly.
func (c *child) wait(t testing.TB) []clientResult {
	t.Helper()
	c.stdin.Close() // a child waiting for stdin (Hold, Bench) finishes now
	var out []clientResult
	for {
		r, ok := c.next(t)
		if !ok {
			break
		}
		out = append(out, r)
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("client child: %v; stderr:\n%s", err, c.stderr.String())
	}
	return out
}

// connects runs job to completion and returns its results.
func (l *lab) connects(job clientJob) []clientResult {
	l.t.Helper()
	return l.start(job).wait(l.t)
}

func (l *lab) apply(services ...model.Service) ApplyStats {
	l.t.Helper()
	st, err := l.dp.Programmer.Apply(config(services...))
	if err != nil {
		l.t.Fatal(err)
	}
	return st
}

func config(services ...model.Service) model.Config {
	cfg := model.Config{Services: map[model.Key]model.Service{}}
	for _, s := range services {
		cfg.Services[s.Key] = s
	}
	return cfg
}

// service is a TCP service at vip (ip:port) with equal-weight endpoints per priority level.
func service(vip string, policy model.Policy, prios ...[]backend) model.Service {
	ap := netip.MustParseAddrPort(vip)
	s := model.Service{Key: model.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: model.TCP}, Name: "svc-" + vip, Policy: policy}
	for _, bs := range prios {
		eps := []model.Endpoint{}
		for _, b := range bs {
			eps = append(eps, model.Endpoint{Addr: b.addr, Weight: 1})
		}
		s.Priorities = append(s.Priorities, eps)
	}
	return s
}

// byBackend counts results per backend name, failing on connection errors.
func byBackend(t testing.TB, rs []clientResult) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i, r := range rs {
		if r.Err != "" {
			t.Fatalf("connection %d of %d failed: %s", i, len(rs), r.Err)
		}
		out[r.Backend]++
	}
	return out
}

func names(bs ...backend) string {
	var s []string
	for _, b := range bs {
		s = append(s, b.name)
	}
	return strings.Join(s, ",")
}
