package datapath

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// bpffsDir returns a directory for t's pins, not yet created, on a bpffs: under /sys/fs/bpf if
// a bpffs is mounted there, else on a bpffs t mounts on a temporary directory. Whatever the test
// leaves there is uninstalled (links detached) and removed at cleanup, even on failure.
func bpffsDir(t testing.TB) string {
	t.Helper()
	root := "/sys/fs/bpf"
	if onBPFFS(root) != nil {
		root = t.TempDir()
		if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
			t.Fatalf("mount a bpffs for the test on %s: %v", root, err)
		}
		t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	}
	dir := filepath.Join(root, fmt.Sprintf("onehop-test-%016x", rand.Uint64()))
	t.Cleanup(func() {
		if _, err := Uninstall(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		os.RemoveAll(dir) // what the test put there itself
	})
	return dir
}

// newPinnedLab is newLab with its datapath pinned under a fresh bpffs directory (l.pinDir). The
// datapath in l.dp when t ends is closed, and everything pinned is uninstalled.
func newPinnedLab(t testing.TB, opts Options) *lab {
	t.Helper()
	l := newWorld(t)
	l.pinDir = bpffsDir(t)
	t.Cleanup(func() {
		if l.dp != nil {
			l.dp.Close()
		}
	})
	l.open(opts)
	if err := l.dp.Enrollment.Enroll(l.cookie, l.netnsOptions); err != nil {
		t.Fatal(err)
	}
	return l
}

// open loads the datapath pinned in l.pinDir into l.dp and attaches it to l.cgroup.
func (l *lab) open(opts Options) {
	l.t.Helper()
	opts.PinDir = l.pinDir
	dp, err := Load(opts)
	if err != nil {
		l.t.Fatal(err)
	}
	l.dp = dp
	if err := dp.Attach(l.cgroup); err != nil {
		l.t.Fatal(err)
	}
}

// echoBackend listens in the lab netns and echoes what it receives; it closes nothing before
// the test ends, so a client's half-close leaves the connection half-open.
func (l *lab) echoBackend(addr string) backend {
	l.t.Helper()
	var (
		ln  net.Listener
		err error
	)
	l.netns.run(func() { ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0")) })
	if err != nil {
		l.t.Fatalf("listen on %s in the test netns: %v", addr, err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	l.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			go io.Copy(c, c)
		}
	}()
	ap := ln.Addr().(*net.TCPAddr).AddrPort()
	return backend{name: "echo", addr: ap}
}

// agentJob is what a child "agent" does (see runAgent); agentResult is what it reports.
type agentJob struct {
	PinDir, Cgroup string
	Services       []model.Service
}

type agentResult struct {
	Adopted Adopted
	Stats   ApplyStats
	Err     string
}

const agentEnv = "ONEHOP_DPTEST_AGENT"

// runAgent is a child process playing the agent: Load, Attach, Apply, report, then wait to be
// killed. It never calls Close: its end is a SIGKILL's.
func runAgent(spec string) int {
	var job agentJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		return 2
	}
	out := json.NewEncoder(os.Stdout)
	opts := testOptions
	opts.PinDir = job.PinDir
	dp, err := Load(opts)
	if err == nil {
		err = dp.Attach(job.Cgroup)
	}
	var r agentResult
	if err == nil {
		r.Adopted = dp.Adopted()
		r.Stats, err = dp.Programmer.Apply(config(job.Services...))
	}
	if err != nil {
		r.Err = err.Error()
	}
	out.Encode(r)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// startAgent runs runAgent in a child process and returns what it reported and a func that
// SIGKILLs it.
func (l *lab) startAgent(services ...model.Service) (agentResult, func()) {
	l.t.Helper()
	spec, _ := json.Marshal(agentJob{PinDir: l.pinDir, Cgroup: l.cgroup, Services: services})
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), agentEnv+"="+string(spec))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	kill := sync.OnceFunc(func() {
		cmd.Process.Kill() // SIGKILL
		cmd.Wait()
		stdin.Close()
	})
	l.t.Cleanup(kill)
	var r agentResult
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil || json.Unmarshal(line, &r) != nil {
		l.t.Fatalf("agent child wrote %q: %v", line, err)
	}
	if r.Err != "" {
		l.t.Fatalf("agent child: %s", r.Err)
	}
	return r, kill
}

// attachedIDs lists the programs attached to the lab cgroup, by attach type.
func (l *lab) attachedIDs() map[ebpf.AttachType][]ebpf.ProgramID {
	l.t.Helper()
	f, err := os.Open(l.cgroup)
	if err != nil {
		l.t.Fatal(err)
	}
	defer f.Close()
	out := map[ebpf.AttachType][]ebpf.ProgramID{}
	for _, at := range attachTypes {
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
		if err != nil {
			l.t.Fatal(err)
		}
		for _, p := range res.Programs {
			out[at] = append(out[at], p.ID)
		}
	}
	return out
}

// pins lists the files and directories under dir, relative to it.
func pins(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out = append(out, rel)
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return out
}

func (l *lab) ourConn(vip string) Conn {
	l.t.Helper()
	conns, err := l.dp.Conns()
	if err != nil {
		l.t.Fatal(err)
	}
	for _, c := range conns {
		if c.VIP.String() == vip {
			return c
		}
	}
	l.t.Fatalf("no connection to %s in %+v", vip, conns)
	return Conn{}
}

// The agent restarts 20 times, by Close and Load (SIGTERM) or by SIGKILL of a child process
// holding the datapath, while a client connects without pause and a long-lived connection
// talks after each restart. No connection may fail; the long-lived one keeps its VIP for
// getpeername and its oh_conns record, which the new programs keep updating; no program is
// ever attached twice; and the first Apply after each restart changes nothing.
func TestRestartsKeepTrafficFlowing(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	bs := l.backends("127.0.0.2", "127.0.0.3")
	const vip, echoVIP = "10.96.200.1:80", "10.96.200.2:80"
	svcs := []model.Service{service(vip, model.RoundRobin, bs), service(echoVIP, model.Random, []backend{l.echoBackend("127.0.0.4")})}
	l.apply(svcs...)
	if a := l.dp.Adopted(); a.Layout != 0 || len(a.Links) != 0 {
		t.Fatalf("first Load adopted %+v from an empty pin directory", a)
	}

	long := l.start(clientJob{Target: echoVIP, Echo: true})
	if r, ok := long.next(t); !ok || r.Err != "" || r.Peer != echoVIP {
		t.Fatalf("long-lived connection: %+v (stderr %s)", r, long.stderr.String())
	}
	conn0 := l.ourConn(echoVIP)
	many := l.start(clientJob{Target: vip, Until: true, Pause: 200 * time.Microsecond})
	attached := l.attachedIDs()

	var (
		kill  func()     // the child agent holding the datapath, if one does
		downs [][2]int64 // from the end of one agent to the first Apply of the next
	)
	for i := range 20 {
		// The current holder goes: SIGTERM (Close) or SIGKILL.
		if kill != nil {
			kill()
			kill = nil
		} else if err := l.dp.Close(); err != nil {
			t.Fatal(err)
		}
		l.dp = nil
		down := monotonic()
		time.Sleep(20 * time.Millisecond)
		var (
			adopted Adopted
			st      ApplyStats
		)
		if i%3 == 2 {
			var r agentResult
			r, kill = l.startAgent(svcs...)
			adopted, st = r.Adopted, r.Stats
		} else {
			l.open(testOptions)
			adopted, st = l.dp.Adopted(), l.apply(svcs...)
		}
		downs = append(downs, [2]int64{down, monotonic()})
		if adopted.Layout != LayoutVersion || len(adopted.Links) != 6 || adopted.Services != 2 ||
			!slices.Equal(adopted.Enrolled, []uint64{l.cookie}) || adopted.Conns < 1 {
			t.Fatalf("restart %d adopted %+v: want layout %d, 6 links (5 cgroup, sockmap/msg), 2 services, netns %d enrolled, the long-lived connection",
				i, adopted, LayoutVersion, l.cookie)
		}
		if st != (ApplyStats{}) {
			t.Fatalf("restart %d: the first Apply of the same config did %+v, want nothing", i, st)
		}
		now := l.attachedIDs()
		for at, ids := range now {
			if len(ids) != 1 {
				t.Fatalf("restart %d: %d %s programs attached, want 1", i, len(ids), at)
			}
		}
		if len(now) != len(attached) {
			t.Fatalf("restart %d: programs attached %v, before %v", i, now, attached)
		}
		msg := fmt.Sprintf("ping %d", i)
		long.stdin.Write([]byte(msg + "\n"))
		if r, ok := long.next(t); !ok || r.Err != "" || r.Backend != msg || r.Peer != echoVIP {
			t.Fatalf("restart %d: long-lived connection answered %+v, want the echo %q and peer %s", i, r, msg, echoVIP)
		}
		// Established is recomputed from the clocks at each read: equal within a millisecond.
		if l.dp == nil {
			continue
		}
		if c := l.ourConn(echoVIP); c.Cookie != conn0.Cookie || c.Established.Sub(conn0.Established).Abs() > time.Millisecond {
			t.Fatalf("restart %d: record %+v, want the one from before the restarts %+v", i, c, conn0)
		}
	}
	if l.dp == nil {
		t.Fatal("the last restart should be in-process")
	}

	rs := many.wait(t)
	got := byBackend(t, rs) // fails on any failed connection
	if len(rs) < 200 || got["b0"] == 0 || got["b1"] == 0 {
		t.Fatalf("%d connections over 20 restarts, by backend %v: want hundreds, over both backends", len(rs), got)
	}
	whileDown, downsHit := 0, 0
	for _, d := range downs {
		n := 0
		for _, r := range rs {
			if r.Start >= d[0] && r.End <= d[1] {
				n++
			}
		}
		whileDown += n
		downsHit += min(n, 1)
	}
	if downsHit < len(downs)/2 {
		t.Errorf("connections were made in only %d of the %d restarts: the client did not keep connecting", downsHit, len(downs))
	}
	// The long-lived connection half-closes: the new programs update the old record.
	long.stdin.Write([]byte("shutdown\n"))
	if r, ok := long.next(t); !ok || r.Err != "" {
		t.Fatalf("shutdown: %+v", r)
	}
	var c Conn
	for range 100 {
		if c = l.ourConn(echoVIP); c.State == 5 { // FIN_WAIT2
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c.State != 5 || c.StateChanges != 2 || c.Cookie != conn0.Cookie {
		t.Errorf("after a half-close: %+v, want the same record in FIN_WAIT2 after 2 state changes", c)
	}
	cnt, err := l.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cnt["connect_balanced"] < uint64(len(rs))+1 {
		t.Errorf("connect_balanced %d, want at least the %d connections made across restarts", cnt["connect_balanced"], len(rs)+1)
	}
	t.Logf("%d connections across 20 restarts (%d while no agent was up or before its first Apply, in %d of the restarts), none failed: %v; counters %v",
		len(rs), whileDown, downsHit, got, cnt)

	if err := l.dp.Uninstall(); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	if left := pins(t, l.pinDir); len(left) > 0 {
		t.Errorf("after Uninstall, %s holds %v", l.pinDir, left)
	}
	if ids := l.attachedIDs(); len(ids) > 0 {
		t.Errorf("after Uninstall, programs are attached: %v", ids)
	}
}

// A service changes while no agent runs; the next agent's first Apply switches it without a
// failed connection, and connections made after it reach only the new endpoint.
func TestChangeWhileDownIsAppliedByTheFirstApply(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	bs := l.backends("127.0.0.2", "127.0.0.3")
	const vip = "10.96.200.1:80"
	l.apply(service(vip, model.Random, bs[:1]))
	c := l.start(clientJob{Target: vip, Until: true, Pause: 200 * time.Microsecond})
	time.Sleep(100 * time.Millisecond)
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	downStart := monotonic()
	time.Sleep(200 * time.Millisecond) // down: the pinned programs balance on
	downEnd := monotonic()
	l.open(testOptions)
	start := monotonic()
	st := l.apply(service(vip, model.Random, bs[1:]))
	done := monotonic()
	if st.ServicesChanged != 1 || st.ServicesAdded != 0 || st.ServicesRemoved != 0 {
		t.Fatalf("first Apply after the restart: %+v, want 1 service changed", st)
	}
	time.Sleep(100 * time.Millisecond)
	rs := c.wait(t)
	byBackend(t, rs) // fails on any failed connection
	var down, after int
	for i, r := range rs {
		switch {
		case r.End < start && r.Backend != "b0":
			t.Fatalf("connection %d before the Apply reached %s, want b0", i, r.Backend)
		case r.Start > done && r.Backend != "b1":
			t.Fatalf("connection %d after the Apply reached %s, want b1", i, r.Backend)
		case r.Start > downStart && r.End < downEnd:
			down++
		case r.Start > done:
			after++
		}
	}
	if down < 10 || after < 10 {
		t.Fatalf("%d connections while down, %d after the Apply: want the client connecting throughout", down, after)
	}
}

// Uninstall detaches onehop's links and removes its layouts, and leaves alone what is not
// onehop's: another program attached to the cgroup, other pins in the same directory.
func TestUninstallRemovesOnlyWhatOnehopPinned(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	bs := l.backends("127.0.0.2")
	const vip = "10.96.200.1:80"
	l.apply(service(vip, model.Random, bs))

	foreign, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	if err := os.Mkdir(filepath.Join(l.pinDir, "other"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"foreign", "other/foreign", "v2-not-a-layout"} {
		m, _ := foreign.Clone() // unpinned: Pin adds a pin
		if err := m.Pin(filepath.Join(l.pinDir, p)); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	otherProg := passProgram(t, ebpf.AttachCGroupInet4Connect)
	otherLink, err := link.AttachCgroup(link.CgroupOptions{Path: l.cgroup, Attach: ebpf.AttachCGroupInet4Connect, Program: otherProg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { otherLink.Close() })

	if err := l.dp.Close(); err != nil { // SIGTERM: still attached, still balancing
		t.Fatal(err)
	}
	l.dp = nil
	byBackend(t, l.connects(clientJob{Target: vip, Count: 5}))

	u, err := Uninstall(l.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Links != 6 || u.Pins != 17 {
		t.Errorf("Uninstall: %+v, want 6 links detached and 17 pins (11 maps, 6 links) removed", u)
	}
	want := []string{"foreign", "other", "other/foreign", "v2-not-a-layout"}
	if left := pins(t, l.pinDir); !slices.Equal(left, want) {
		t.Errorf("after Uninstall %s holds %v, want only what is not onehop's: %v", l.pinDir, left, want)
	}
	ids := l.attachedIDs()
	info, _ := otherProg.Info()
	otherID, _ := info.ID()
	if len(ids) != 1 || !slices.Equal(ids[ebpf.AttachCGroupInet4Connect], []ebpf.ProgramID{otherID}) {
		t.Errorf("after Uninstall attached: %v, want only the other program %d", ids, otherID)
	}
	if names, err := AttachedPrograms(l.cgroup); err != nil || len(names) != 0 {
		t.Errorf("AttachedPrograms = %v, %v; want none", names, err)
	}
	for _, r := range l.connects(clientJob{Target: vip, Count: 1}) {
		if !strings.Contains(r.Err, "network is unreachable") {
			t.Errorf("after Uninstall a connect to the VIP: %+v, want it not balanced (network is unreachable)", r)
		}
	}
	if u, err := Uninstall(l.pinDir); err != nil || u != (Uninstalled{}) {
		t.Errorf("Uninstall again: %+v, %v; want nothing to do", u, err)
	}
}

// passProgram is a program of the type attach needs that lets everything through.
func passProgram(t testing.TB, attach ebpf.AttachType) *ebpf.Program {
	t.Helper()
	typ := ebpf.CGroupSockAddr
	if attach == ebpf.AttachCGroupSockOps {
		typ = ebpf.SockOps
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: typ, AttachType: attach, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// A pinned link of a cgroup removed meanwhile is unpinned by the next Load; the others are
// adopted.
func TestLoadDropsLinksOfRemovedCgroups(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	gone := filepath.Join(cgroupRoot, fmt.Sprintf("onehop-test-%016x", rand.Uint64()))
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(gone) })
	if err := l.dp.Attach(gone); err != nil {
		t.Fatal(err)
	}
	goneID, _ := cgroupIDOf(gone)
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	// The kernel releases the cgroup asynchronously; its links then report cgroup 0.
	pin := linkPin(layoutDir(l.pinDir, LayoutVersion), goneID, programs[0])
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		lk, err := link.LoadPinnedLink(pin, nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := lk.Info()
		lk.Close()
		if err == nil && info.Cgroup().CgroupId == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel did not release removed cgroup %d within 10s", goneID)
		}
	}
	l.open(testOptions)
	a := l.dp.Adopted()
	dropped := 0
	for _, n := range a.Notes {
		if strings.Contains(n, fmt.Sprintf("cgroup-%d/", goneID)) && strings.Contains(n, "its cgroup is gone") {
			dropped++
		}
	}
	if len(a.Links) != 6 || dropped != 5 {
		t.Errorf("Adopted() = %+v, want the 5 links of the lab cgroup and sockmap/msg adopted and the 5 of the removed one unpinned", a)
	}
	for _, p := range pins(t, l.pinDir) {
		if strings.Contains(p, fmt.Sprintf("cgroup-%d", goneID)) {
			t.Errorf("%s is still pinned", p)
		}
	}
}

// An agent started without connection tracking detaches and unpins the sockops link a tracking
// agent left; the next tracking agent attaches and pins it again.
func TestConnTrackingTurnedOffAndOnAcrossRestarts(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	id, _ := cgroupIDOf(l.cgroup)
	sockopsPin := linkPin(layoutDir(l.pinDir, LayoutVersion), id, programs[4])
	for _, track := range []bool{false, true} {
		l.dp.Close()
		opts := testOptions
		opts.NoConnTracking = !track
		l.open(opts)
		ids := l.attachedIDs()
		_, err := os.Stat(sockopsPin)
		if len(ids) != 4+map[bool]int{true: 1}[track] || (len(ids[ebpf.AttachCGroupSockOps]) == 1) != track || (err == nil) != track {
			t.Errorf("tracking %v: attached %v, sockops pin: %v", track, ids, err)
		}
	}
}
