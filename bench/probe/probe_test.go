package probe

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/log"
)

// echoServer starts fortio's echo server (what the lab's server pods run) on loopback.
func echoServer(t *testing.T) string {
	t.Helper()
	log.SetLogLevel(log.Warning)
	_, addr := fhttp.ServeTCP("0", "")
	if addr == nil {
		t.Fatal("fortio echo server did not start")
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(addr.Port))
}

// proxy forwards TCP to a backend and can break things the way a data plane restart might.
type proxy struct {
	t       *testing.T
	backend string
	addr    string
	mu      sync.Mutex
	l       net.Listener
	conns   map[*net.TCPConn]bool // prober-side connections
}

func newProxy(t *testing.T, backend string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, backend: backend, addr: l.Addr().String(), conns: map[*net.TCPConn]bool{}}
	p.serve(l)
	t.Cleanup(func() { p.mu.Lock(); p.l.Close(); p.mu.Unlock(); p.reset() })
	return p
}

func (p *proxy) serve(l net.Listener) {
	p.mu.Lock()
	p.l = l
	p.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go p.forward(c.(*net.TCPConn))
		}
	}()
}

func (p *proxy) forward(c *net.TCPConn) {
	defer c.Close()
	b, err := net.Dial("tcp", p.backend)
	if err != nil {
		return
	}
	defer b.Close()
	p.mu.Lock()
	p.conns[c] = true
	p.mu.Unlock()
	go func() { io.Copy(b, c); b.Close() }()
	io.Copy(c, b)
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// reset sends an RST on every current prober-side connection.
func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.SetLinger(0)
		c.Close()
		delete(p.conns, c)
	}
}

// pause stops accepting (connects are refused) for d, then listens again on the same port.
func (p *proxy) pause(d time.Duration) {
	p.mu.Lock()
	p.l.Close()
	p.mu.Unlock()
	time.Sleep(d)
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Error("listen again:", err)
		return
	}
	p.serve(l)
}

// run probes, calling during (if set) in its own goroutine once the probe has started.
func run(t *testing.T, cfg Config, during func()) *Result {
	t.Helper()
	started := make(chan struct{})
	cfg.OnStarted = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case <-started:
			if during != nil {
				during()
			}
		case <-time.After(10 * time.Second):
		}
	}()
	res, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	checkBucketsSum(t, res)
	return res
}

func checkBucketsSum(t *testing.T, res *Result) {
	t.Helper()
	var sum Counts
	for i, b := range res.Buckets {
		if want := res.StartUnixNs + int64(i)*int64(res.Config.Bucket); b.StartUnixNs != want {
			t.Fatalf("bucket %d starts at %d, want %d", i, b.StartUnixNs, want)
		}
		c := b.Counts
		sum.RequestsOK += c.RequestsOK
		sum.RequestsFailed += c.RequestsFailed
		sum.ConnectErrors += c.ConnectErrors
		sum.Resets += c.Resets
		sum.NewConnOK += c.NewConnOK
		sum.NewConnFailed += c.NewConnFailed
		sum.NewConnSkipped += c.NewConnSkipped
		sum.LongLivedOK += c.LongLivedOK
		sum.LongLivedFailed += c.LongLivedFailed
	}
	if sum != res.Summary.Counts {
		t.Errorf("buckets sum to %+v, summary says %+v", sum, res.Summary.Counts)
	}
	s := res.Summary
	if s.RequestsOK != s.LongLivedOK+s.NewConnOK || s.RequestsFailed != s.LongLivedFailed+s.NewConnFailed {
		t.Errorf("requests do not add up: %+v", s.Counts)
	}
	if int64(len(s.LongLivedLost)) != s.LongLivedFailed {
		t.Errorf("%d losses listed, %d long-lived requests failed", len(s.LongLivedLost), s.LongLivedFailed)
	}
}

// bucketOf is the index of the bucket holding wall-clock time at.
func bucketOf(res *Result, at time.Time) int {
	return int(at.UnixNano()-res.StartUnixNs) / int(res.Config.Bucket)
}

func TestHealthyRun(t *testing.T) {
	cfg := Config{Target: echoServer(t), LongLived: 4, Interval: 20 * time.Millisecond, NewConnRate: 100,
		Duration: 1500 * time.Millisecond, Bucket: 100 * time.Millisecond}
	res := run(t, cfg, nil)
	s := res.Summary
	if s.LongLivedTotal != 4 || s.LongLivedSurviving != 4 || len(s.LongLivedLost) != 0 || s.LongLivedReconnect != 0 {
		t.Errorf("long-lived: total %d surviving %d lost %v reconnects %d", s.LongLivedTotal, s.LongLivedSurviving, s.LongLivedLost, s.LongLivedReconnect)
	}
	if s.RequestsFailed != 0 || s.ConnectErrors != 0 || s.NewConnSkipped != 0 || len(s.ErrorsByClass) != 0 {
		t.Errorf("failures on a healthy loopback: %+v %v", s.Counts, s.ErrorsByClass)
	}
	if len(res.Buckets) != 15 {
		t.Errorf("%d buckets for 1.5s at 100ms", len(res.Buckets))
	}
	// 150 new connections and 4 x 75 long-lived requests are due.
	if s.NewConnOK < 105 || s.NewConnOK > 152 {
		t.Errorf("%d new connections, want about 150", s.NewConnOK)
	}
	if s.LongLivedOK < 210 || s.LongLivedOK > 304 {
		t.Errorf("%d long-lived requests, want about 300", s.LongLivedOK)
	}
	for i, c := range s.LongLivedConnections {
		if c.Conn != i || c.Gen != 0 || c.LocalAddr == "" || c.RequestsOK < 50 || c.LastSeq < uint64(c.RequestsOK) {
			t.Errorf("connection %d: %+v", i, c)
		}
	}
	for i, b := range res.Buckets[:len(res.Buckets)-1] {
		if b.NewConnOK == 0 || b.LongLivedOK < 8 || b.P50Us <= 0 || b.P99Us < b.P50Us || b.NewConnP99Us <= 0 {
			t.Errorf("bucket %d: %+v", i, b)
		}
	}
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"schema_version":1`, `"long_lived_surviving":4`, `"interval_ns":20000000`, `"new_conn_p99_us":`, `"long_lived_lost":[]`} {
		if !strings.Contains(string(raw), k) {
			t.Errorf("result JSON lacks %s", k)
		}
	}
}

// With no duration the probe runs until cancelled, then still returns its result.
func TestRunsUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{Target: echoServer(t), LongLived: 2, NewConnRate: 50, OnStarted: func() { time.AfterFunc(350*time.Millisecond, cancel) }}
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkBucketsSum(t, res)
	if s := res.Summary; s.RequestsFailed != 0 || s.LongLivedSurviving != 2 || s.LongLivedOK < 20 || len(res.Buckets) != 4 {
		t.Errorf("cancelled run: %d buckets, %+v", len(res.Buckets), s)
	}
}

func TestResetLongLivedConnections(t *testing.T) {
	px := newProxy(t, echoServer(t))
	var resetAt time.Time
	cfg := Config{Target: px.addr, LongLived: 4, Interval: 20 * time.Millisecond, NewConnRate: 50,
		Duration: 1500 * time.Millisecond, Bucket: 100 * time.Millisecond}
	res := run(t, cfg, func() {
		time.Sleep(640 * time.Millisecond)
		resetAt = time.Now()
		px.reset()
	})
	s := res.Summary
	if s.LongLivedSurviving != 0 || s.LongLivedReconnect != 4 || s.LongLivedFailed != 4 {
		t.Fatalf("after resetting all: surviving %d reconnects %d failed %d, lost %+v", s.LongLivedSurviving, s.LongLivedReconnect, s.LongLivedFailed, s.LongLivedLost)
	}
	lostSlots := map[int]bool{}
	for _, l := range s.LongLivedLost {
		lostSlots[l.Conn] = true
		if l.Gen != 0 || (l.ErrorClass != "reset" && l.ErrorClass != "eof") {
			t.Errorf("loss %+v, want of an original connection, class reset or eof", l)
		}
		if d := time.Duration(l.LostAtUnixNs - resetAt.UnixNano()); d < 0 || d > 100*time.Millisecond {
			t.Errorf("connection %d lost %v after the reset", l.Conn, d)
		}
	}
	if len(lostSlots) != 4 {
		t.Errorf("losses %+v, want each slot once", s.LongLivedLost)
	}
	// The failed requests were sent at most one interval after the reset (or were in flight).
	first, last := bucketOf(res, resetAt.Add(-time.Millisecond)), bucketOf(res, resetAt.Add(30*time.Millisecond))
	var failed int64
	for _, b := range res.Buckets[first : last+1] {
		failed += b.LongLivedFailed
	}
	if failed != 4 {
		t.Errorf("%d long-lived failures in buckets %d-%d around the reset, want 4", failed, first, last)
	}
	// Replacements are new sockets that carry the load to the end.
	if len(s.LongLivedConnections) != 8 {
		t.Fatalf("%d connections, want 4 + 4 replacements", len(s.LongLivedConnections))
	}
	for _, c := range s.LongLivedConnections[4:] {
		orig := s.LongLivedConnections[c.Conn]
		if c.Gen != 1 || c.LocalAddr == orig.LocalAddr || c.LostAtUnixNs != 0 || c.RequestsOK < 20 || c.LastSeq <= orig.LastSeq {
			t.Errorf("replacement %+v of %+v", c, orig)
		}
	}
	for i := last + 1; i < len(res.Buckets)-1; i++ {
		if b := res.Buckets[i]; b.LongLivedOK < 8 || b.LongLivedFailed != 0 {
			t.Errorf("bucket %d after the reset: %+v", i, b)
		}
	}
}

func TestRefusedNewConnections(t *testing.T) {
	px := newProxy(t, echoServer(t))
	var closedAt, reopenedAt time.Time
	cfg := Config{Target: px.addr, LongLived: 2, NewConnRate: 100, Duration: 1500 * time.Millisecond, Bucket: 100 * time.Millisecond}
	res := run(t, cfg, func() {
		time.Sleep(450 * time.Millisecond)
		closedAt = time.Now()
		px.pause(300 * time.Millisecond)
		reopenedAt = time.Now()
	})
	s := res.Summary
	// About 30 attempts fall in the pause; all of them are refused.
	if s.ConnectErrors < 20 || s.ConnectErrors != s.NewConnFailed || s.ErrorsByClass["refused"] != s.ConnectErrors {
		t.Errorf("pause of 300ms at 100/s: %+v %v", s.Counts, s.ErrorsByClass)
	}
	if s.LongLivedSurviving != 2 || s.LongLivedFailed != 0 {
		t.Errorf("established connections must outlive a closed listener: %+v", s)
	}
	first, last := bucketOf(res, closedAt), bucketOf(res, reopenedAt)
	for i, b := range res.Buckets {
		switch {
		case b.ConnectErrors > 0 && (i < first || i > last):
			t.Errorf("bucket %d outside the pause (buckets %d-%d) has connect errors: %+v", i, first, last, b)
		case i > first && i < last && (b.NewConnOK != 0 || b.ConnectErrors < 5):
			t.Errorf("bucket %d inside the pause: %+v", i, b)
		case i > last && i < len(res.Buckets)-1 && b.NewConnOK < 5:
			t.Errorf("bucket %d after the pause: new connections did not resume: %+v", i, b)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	ok := Config{Target: "10.96.0.10:8080", LongLived: 16, NewConnRate: 200}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for field, mut := range map[string]func(*Config){
		"target":        func(c *Config) { c.Target = "10.96.0.10" },
		"path":          func(c *Config) { c.Path = "echo" },
		"long_lived":    func(c *Config) { c.LongLived = -1 },
		"new_conn_rate": func(c *Config) { c.NewConnRate = -5 },
		"max_in_flight": func(c *Config) { c.MaxInFlight = -1 },
		"interval_ns":   func(c *Config) { c.Interval = -time.Second },
		"duration_ns":   func(c *Config) { c.Duration = -time.Second },
		"bucket_ns":     func(c *Config) { c.Bucket = time.Microsecond },
		"timeout_ns":    func(c *Config) { c.Timeout = -time.Second },
		"nothing to probe": func(c *Config) {
			c.LongLived, c.NewConnRate = 0, 0
		},
	} {
		c := ok
		mut(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name it", field, err)
		}
		if _, rerr := Run(context.Background(), c); rerr == nil {
			t.Errorf("%s: Run accepted an invalid config", field)
		}
	}
	if err := (Config{Target: "x:0", Path: "y"}).Validate(); err == nil || !strings.Contains(err.Error(), "target") || !strings.Contains(err.Error(), "path") {
		t.Errorf("all errors at once: %v", err)
	}
}
