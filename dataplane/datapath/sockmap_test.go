package datapath

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

// Same-node acceleration against the real kernel. Both ends of each connection run in one child
// process in the lab's cgroup and netns (sockops sees a socket by its creator's cgroup), which
// checks what its applications see; the test reads the kernel's counters to know whether the
// payloads were redirected or went through TCP/IP.

const sockmapEnv = "ONEHOP_DPTEST_SOCKMAP" // set for the child: the sockmapJob, as JSON

// sockmapJob is one check the child runs on a connection it makes to itself.
type sockmapJob struct {
	Check  string `json:"check"`  // integrity, halfclose, reset, peerclose, stream
	Listen string `json:"listen"` // the server's address (port 0: any)
}

// sockmapResult is the child's report: one line per check, or per exchange of a stream.
type sockmapResult struct {
	Check string `json:"check"`
	Err   string `json:"err,omitempty"`
	Bytes int    `json:"bytes"` // payload bytes the applications exchanged, both directions
}

// pair returns a connected client and the server's end of it.
func pair(listen string) (cli, srv *net.TCPConn, err error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	s := <-accepted
	if s == nil {
		c.Close()
		return nil, nil, errors.New("accept failed")
	}
	return c.(*net.TCPConn), s.(*net.TCPConn), nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// echoed sends p from a to b while b echoes what it reads, and checks a reads p back whole.
func echoed(a, b net.Conn, p []byte) error {
	errc := make(chan error, 2)
	go func() { // b: read len(p), write it back
		got := make([]byte, len(p))
		if _, err := io.ReadFull(b, got); err != nil {
			errc <- fmt.Errorf("server read %d bytes: %w", len(p), err)
			return
		}
		_, err := b.Write(got)
		errc <- err
	}()
	go func() {
		_, err := a.Write(p)
		errc <- err
	}()
	back := make([]byte, len(p))
	if _, err := io.ReadFull(a, back); err != nil {
		return fmt.Errorf("client read the echo of %d bytes: %w", len(p), err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			return err
		}
	}
	if !bytes.Equal(back, p) {
		return fmt.Errorf("the echo of %d bytes differs", len(p))
	}
	return nil
}

func runSockmapChild(spec string) int {
	var job sockmapJob
	if err := json.Unmarshal([]byte(spec), &job); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	out := json.NewEncoder(os.Stdout)
	res := sockmapResult{Check: job.Check}
	err := func() error {
		cli, srv, err := pair(job.Listen)
		if err != nil {
			return err
		}
		defer cli.Close()
		defer srv.Close()
		deadline := time.Now().Add(10 * time.Second)
		cli.SetDeadline(deadline)
		srv.SetDeadline(deadline)
		switch job.Check {
		case "integrity": // small and large payloads, each way
			for _, n := range []int{1, 100, 1500, 64 << 10, 1 << 20, 4 << 20} {
				if err := echoed(cli, srv, randomBytes(n)); err != nil {
					return err
				}
				if err := echoed(srv, cli, randomBytes(n)); err != nil {
					return err
				}
				res.Bytes += 4 * n
			}
		case "halfclose": // the client's FIN after its data; the server answers, then closes
			p, q := randomBytes(300<<10), randomBytes(200<<10)
			go func() {
				cli.Write(p)
				cli.CloseWrite()
			}()
			got, err := io.ReadAll(srv)
			if err != nil || !bytes.Equal(got, p) {
				return fmt.Errorf("server read %d of %d bytes before EOF: %v", len(got), len(p), err)
			}
			if _, err := srv.Write(q); err != nil {
				return fmt.Errorf("server writes after the client's half-close: %w", err)
			}
			srv.Close()
			got, err = io.ReadAll(cli)
			if err != nil || !bytes.Equal(got, q) {
				return fmt.Errorf("client read %d of %d bytes before EOF: %v", len(got), len(q), err)
			}
			res.Bytes = len(p) + len(q)
		case "reset": // the client resets: the server's read fails with ECONNRESET
			if err := echoed(cli, srv, []byte("hello")); err != nil {
				return err
			}
			cli.SetLinger(0)
			cli.Close()
			_, err := srv.Read(make([]byte, 10))
			if !errors.Is(err, syscall.ECONNRESET) {
				return fmt.Errorf("server read after the client's reset: %v, want ECONNRESET", err)
			}
			res.Bytes = 10
		case "peerclose": // the server goes: the client sees EOF, and its writes fail, not hang
			if err := echoed(cli, srv, []byte("hello")); err != nil {
				return err
			}
			srv.Close()
			if n, err := cli.Read(make([]byte, 10)); err != io.EOF {
				return fmt.Errorf("client read after the server closed: %d, %v; want EOF", n, err)
			}
			var werr error
			for i := 0; i < 100 && werr == nil; i++ {
				_, werr = cli.Write([]byte("more"))
				time.Sleep(10 * time.Millisecond)
			}
			if !errors.Is(werr, syscall.EPIPE) && !errors.Is(werr, syscall.ECONNRESET) {
				return fmt.Errorf("client writes to a closed peer: %v, want EPIPE or ECONNRESET", werr)
			}
			res.Bytes = 10
		case "stream": // one long connection: an exchange per line on stdin, until its end
			cli.SetDeadline(time.Time{})
			srv.SetDeadline(time.Time{})
			in := bufio.NewScanner(os.Stdin)
			for in.Scan() {
				r := sockmapResult{Check: job.Check, Bytes: 4 * (64 << 10)}
				if err := errors.Join(echoed(cli, srv, randomBytes(64<<10)), echoed(srv, cli, randomBytes(64<<10))); err != nil {
					r.Err = err.Error()
				}
				if out.Encode(r) != nil {
					return nil
				}
			}
			return nil
		default:
			return fmt.Errorf("no check %q", job.Check)
		}
		return nil
	}()
	if job.Check == "stream" && err == nil {
		return 0
	}
	if err != nil {
		res.Err = err.Error()
	}
	out.Encode(res)
	return 0
}

// sockmapRun runs one check in a child in l's cgroup and netns, and returns its result and what
// the kernel counted meanwhile.
func (l *lab) sockmapRun(job sockmapJob) (sockmapResult, map[string]uint64) {
	l.t.Helper()
	before, err := l.dp.Counters()
	if err != nil {
		l.t.Fatal(err)
	}
	c := l.sockmapChild(job)
	out, err := io.ReadAll(c.stdout)
	werr := c.cmd.Wait()
	var res sockmapResult
	if jerr := json.Unmarshal(out, &res); err != nil || werr != nil || jerr != nil {
		l.t.Fatalf("sockmap child %+v: %v %v %v; stdout %q, stderr:\n%s", job, err, werr, jerr, out, c.stderr.String())
	}
	after, err := l.dp.Counters()
	if err != nil {
		l.t.Fatal(err)
	}
	delta := map[string]uint64{}
	for k, v := range after {
		if d := v - before[k]; d > 0 {
			delta[k] = d
		}
	}
	return res, delta
}

type sockmapProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout io.Reader
	stderr bytes.Buffer
}

// sockmapChild starts the child in the lab's cgroup and netns.
func (l *lab) sockmapChild(job sockmapJob) *sockmapProc {
	l.t.Helper()
	cmd, done := l.childCmd(sockmapEnv, job)
	defer done()
	p := &sockmapProc{cmd: cmd}
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		l.t.Fatal(err)
	}
	if p.stdout, err = p.cmd.StdoutPipe(); err != nil {
		l.t.Fatal(err)
	}
	l.netns.run(func() { err = p.cmd.Start() })
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		p.stdin.Close()
		p.cmd.Process.Kill()
		p.cmd.Wait()
	})
	return p
}

// sockmapLab is a lab whose netns is enrolled with opts.
func sockmapLab(t *testing.T, opts NetnsOptions) *lab {
	t.Helper()
	l := newWorld(t)
	l.netnsOptions = opts
	l.dp = loadDatapath(t, testOptions)
	if err := l.dp.Attach(l.cgroup); err != nil {
		t.Fatal(err)
	}
	if err := l.dp.Enrollment.Enroll(l.cookie, opts); err != nil {
		t.Fatal(err)
	}
	return l
}

var sockmapChecks = []string{"integrity", "halfclose", "reset", "peerclose"}

// With sockmap on, loopback connections are redirected (both ends added, payloads handed from
// socket to socket) and what the applications see is exactly what TCP gives them: every byte
// in order both ways, half-close, reset, a peer that closes. With it off, nothing is added
// and the same checks pass through TCP/IP.
func TestSockmapRedirectsAndKeepsTCPSemantics(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("sockmap=%v", on), func(t *testing.T) {
			l := sockmapLab(t, NetnsOptions{Sockmap: on})
			for _, check := range sockmapChecks {
				for _, listen := range []string{"127.0.0.1:0", "[::1]:0"} {
					res, cnt := l.sockmapRun(sockmapJob{Check: check, Listen: listen})
					t.Logf("%s %s: %d bytes; counted %v", check, listen, res.Bytes, cnt)
					if res.Err != "" {
						t.Errorf("%s %s: %s", check, listen, res.Err)
					}
					switch {
					case on && (cnt["sockmap_added"] != 2 || cnt["msg_redirected"] == 0 || cnt["sockmap_failed"] != 0):
						t.Errorf("%s %s: counted %v, want both ends added and payloads redirected", check, listen, cnt)
					case !on && (cnt["sockmap_added"] != 0 || cnt["msg_redirected"] != 0):
						t.Errorf("%s %s with sockmap off: counted %v, want nothing added or redirected", check, listen, cnt)
					}
				}
			}
		})
	}
}

// Only same-node peers are accelerated: a peer at an address that is not loopback is only
// when the agent named it local (SetLocal); an unenrolled namespace never is.
func TestSockmapOnlySameNodeAndEnrolled(t *testing.T) {
	l := sockmapLab(t, NetnsOptions{Sockmap: true})
	// A pod address on the namespace's loopback device: local, but not loopback.
	const podAddr = "10.77.0.1"
	var out []byte
	var err error
	l.netns.run(func() { out, err = exec.Command("ip", "addr", "add", podAddr+"/32", "dev", "lo").CombinedOutput() })
	if err != nil {
		t.Fatalf("ip addr add: %v %s", err, out)
	}
	job := sockmapJob{Check: "integrity", Listen: podAddr + ":0"}
	if res, cnt := l.sockmapRun(job); res.Err != "" || cnt["sockmap_added"] != 0 || cnt["msg_redirected"] != 0 {
		t.Errorf("peer not known as local (another node's): %+v, counted %v; want it through TCP/IP", res, cnt)
	}
	if err := l.dp.SetLocal([]netip.Addr{netip.MustParseAddr(podAddr)}, true); err != nil {
		t.Fatal(err)
	}
	if local, _ := l.dp.Local(); len(local) != 1 || local[0].String() != podAddr {
		t.Errorf("Local() = %v", local)
	}
	if res, cnt := l.sockmapRun(job); res.Err != "" || cnt["sockmap_added"] != 2 || cnt["msg_redirected"] == 0 {
		t.Errorf("peer named local: %+v, counted %v; want it redirected", res, cnt)
	}
	if err := l.dp.SetLocal([]netip.Addr{netip.MustParseAddr(podAddr)}, false); err != nil {
		t.Fatal(err)
	}
	if res, cnt := l.sockmapRun(job); res.Err != "" || cnt["sockmap_added"] != 0 {
		t.Errorf("peer no longer local: %+v, counted %v", res, cnt)
	}
	if err := l.dp.Enrollment.Unenroll(l.cookie); err != nil {
		t.Fatal(err)
	}
	if res, cnt := l.sockmapRun(sockmapJob{Check: "integrity", Listen: "127.0.0.1:0"}); res.Err != "" || cnt["sockmap_added"] != 0 || cnt["msg_redirected"] != 0 {
		t.Errorf("unenrolled namespace: %+v, counted %v; want nothing added", res, cnt)
	}
}

// Telemetry counts what was redirected: the close events of both ends carry every byte the
// applications exchanged, though TCP carried almost none of it.
func TestSockmapTelemetryCountsRedirectedBytes(t *testing.T) {
	l := sockmapLab(t, NetnsOptions{Sockmap: true, Telemetry: true})
	rd, err := l.dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	res, cnt := l.sockmapRun(sockmapJob{Check: "integrity", Listen: "127.0.0.1:0"})
	if res.Err != "" || cnt["msg_redirected"] == 0 {
		t.Fatalf("%+v, counted %v", res, cnt)
	}
	evs := readEvents(t, rd, 5*time.Second, closes(2))
	each := uint64(res.Bytes / 2) // each end sent half of what both exchanged, and received the other
	for _, e := range evs {
		if e.Type != EventClose {
			continue
		}
		if e.Total.BytesSent != each || e.Total.BytesReceived != each {
			t.Errorf("%s close: sent %d, received %d; want %d each way\n%s", e.Direction, e.Total.BytesSent, e.Total.BytesReceived, each, dumpEvents(evs))
		}
	}
}

// A pinned datapath keeps redirecting across restarts: Load adopts oh_sockhash and the pinned
// sk_msg link (switched to the new program in place), and a long connection keeps exchanging
// data through each restart, still redirected, never failing.
func TestSockmapAdoptedAcrossRestarts(t *testing.T) {
	l := newWorld(t)
	l.pinDir = bpffsDir(t)
	l.netnsOptions = NetnsOptions{Sockmap: true}
	t.Cleanup(func() {
		if l.dp != nil {
			l.dp.Close()
		}
	})
	l.open(testOptions)
	if err := l.dp.Enrollment.Enroll(l.cookie, l.netnsOptions); err != nil {
		t.Fatal(err)
	}
	p := l.sockmapChild(sockmapJob{Check: "stream", Listen: "127.0.0.1:0"})
	lines := bufio.NewScanner(p.stdout)
	send := func() (sockmapResult, error) {
		fmt.Fprintln(p.stdin, "go")
		if !lines.Scan() {
			return sockmapResult{}, fmt.Errorf("the child stopped: %s", p.stderr.String())
		}
		var r sockmapResult
		json.Unmarshal(lines.Bytes(), &r)
		if r.Err != "" {
			return r, errors.New(r.Err)
		}
		return r, nil
	}
	exchange := func(when string) {
		t.Helper()
		before, _ := l.dp.Counters()
		r, err := send()
		after, _ := l.dp.Counters()
		if err != nil || after["msg_redirected"] <= before["msg_redirected"] {
			t.Fatalf("%s: %+v %v, redirected %d -> %d", when, r, err, before["msg_redirected"], after["msg_redirected"])
		}
	}
	exchange("before any restart")
	for i := range 3 {
		// As a killed agent: the datapath goes without detaching; a new one loads meanwhile
		// traffic flows.
		done := make(chan error, 1)
		go func() {
			for range 20 {
				if _, err := send(); err != nil {
					done <- fmt.Errorf("restart %d, meanwhile: %w", i, err)
					return
				}
			}
			done <- nil
		}()
		l.dp.Close()
		l.open(testOptions)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if a := l.dp.Adopted(); !slices.Contains(a.Links, "sockmap/msg") {
			t.Fatalf("restart %d adopted %+v, want the sk_msg link", i, a)
		}
		exchange(fmt.Sprintf("after restart %d", i))
	}
}
