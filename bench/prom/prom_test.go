package prom

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/onehop-mesh/onehop/internal/netnsrun"
)

// TestMain lets the test binary stand in for a Prometheus that ignores SIGTERM and has a child
// in its process group, to test that Close kills both.
func TestMain(m *testing.M) {
	if os.Getenv("OHPROM_FAKE_PROMETHEUS") == "ignore-term" {
		fakePrometheus()
	}
	os.Exit(m.Run())
}

func fakePrometheus() {
	signal.Ignore(syscall.SIGTERM)
	var listen, config string
	for _, a := range os.Args[1:] {
		if v, ok := strings.CutPrefix(a, "--web.listen-address="); ok {
			listen = v
		}
		if v, ok := strings.CutPrefix(a, "--config.file="); ok {
			config = v
		}
	}
	child := exec.Command("sleep", "600")
	if err := child.Start(); err != nil {
		panic(err)
	}
	os.WriteFile(filepath.Join(filepath.Dir(config), "child.pid"), []byte(strconv.Itoa(child.Process.Pid)), 0o644)
	http.HandleFunc("/-/ready", func(http.ResponseWriter, *http.Request) {})
	panic(http.ListenAndServe(listen, nil))
}

func TestCloseKillsWhatIgnoresSIGTERM(t *testing.T) {
	t.Setenv("OHPROM_FAKE_PROMETHEUS", "ignore-term")
	dir := t.TempDir()
	s, err := Start(context.Background(), Options{Binary: os.Args[0], Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b, err := os.ReadFile(filepath.Join(dir, "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	child, _ := strconv.Atoi(string(b))
	err = s.Close()
	if err == nil || !strings.Contains(err.Error(), "did not stop within 5s of SIGTERM") {
		t.Errorf("Close: %v, want the SIGKILL error", err)
	}
	for _, pid := range []int{s.PID(), child} {
		// The child was reparented to init (or a subreaper), which reaps it soon after SIGKILL.
		deadline := time.Now().Add(5 * time.Second)
		for syscall.Kill(pid, 0) == nil && !zombie(pid) {
			if time.Now().After(deadline) {
				t.Fatalf("pid %d still running after Close", pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true // gone
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

// needPrometheus skips when Debian's prometheus is not installed, except in CI, where a missing
// binary means `make deps` did not run and must fail.
func needPrometheus(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("prometheus"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("prometheus not in PATH with CI=%s: run `make deps` as root (Debian package prometheus)", os.Getenv("CI"))
		}
		t.Skip("prometheus not in PATH: run `make deps` as root to install it (with CI set this fails)")
	}
}

// serveCounter serves a registry with one counter on l, as a lab agent serves its metrics.
func serveCounter(t *testing.T, l net.Listener) prometheus.Counter {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ohprom_test_events_total", Help: "Events counted by the test."})
	reg.MustRegister(c)
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return c
}

func start(t *testing.T, o Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// waitValue polls an instant query until it returns one sample equal to want: a scrape every
// 200ms makes the new value visible within a few hundred milliseconds.
func waitValue(t *testing.T, s *Server, promql string, want float64) Sample {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := s.Query(context.Background(), promql, time.Time{})
		if err == nil && len(got) == 1 && got[0].Value == want {
			return got[0]
		}
		if time.Now().After(deadline) {
			targets, _ := s.Targets(context.Background())
			t.Fatalf("%s: want one sample of value %v within 10s, got %+v (err %v); targets %v", promql, want, got, err, targets)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestScrapeAndQuery(t *testing.T) {
	needPrometheus(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	events := serveCounter(t, l)
	dir := t.TempDir()
	s := start(t, Options{Dir: dir, ScrapeInterval: 200 * time.Millisecond,
		Targets: []Target{{Job: "app", Address: l.Addr().String(), Labels: map[string]string{"node": "n1"}}}})
	if strings.HasSuffix(s.Addr(), ":9090") {
		t.Errorf("server listens on %s, the packaged service's port", s.Addr())
	}
	for _, f := range []string{"prometheus.yml", "prometheus.log", "data"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.WaitScraped(ctx, "app", 0); err != nil {
		t.Fatal(err)
	}
	targets, err := s.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(targets) != 1 || targets[0].Health != "up" || targets[0].Instance != l.Addr().String() {
		t.Fatalf("targets = %v, want app/%s up", targets, l.Addr())
	}

	events.Add(7)
	smp := waitValue(t, s, `ohprom_test_events_total{job="app"}`, 7)
	if smp.Labels["node"] != "n1" || smp.Labels["instance"] != l.Addr().String() {
		t.Errorf("labels = %v, want node=n1 and instance=%s", smp.Labels, l.Addr())
	}
	if age := time.Since(smp.Time); age < 0 || age > 5*time.Second {
		t.Errorf("sample time %v is %v from now", smp.Time, age)
	}

	end := time.Now()
	series, err := s.QueryRange(ctx, `ohprom_test_events_total`, end.Add(-10*time.Second), end, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 1 || len(series[0].Points) < 2 {
		t.Fatalf("range query: want one series with points, got %+v", series)
	}
	pts := series[0].Points
	if first, last := pts[0].Value, pts[len(pts)-1].Value; first != 0 || last != 7 {
		t.Errorf("range query: first %v last %v, want 0 then 7", first, last)
	}

	if got, err := s.Query(ctx, "1 + 1", time.Time{}); err != nil || len(got) != 1 || got[0].Value != 2 {
		t.Errorf("scalar query: %+v, %v; want 2", got, err)
	}
	if _, err := s.Query(ctx, "sum(", time.Time{}); err == nil || !strings.Contains(err.Error(), "bad_data") {
		t.Errorf("bad query: error %v, want bad_data", err)
	}
}

// TestWaitScrapedReportsTargets checks that a target that cannot be scraped makes WaitScraped
// fail with the target's own scrape error, which is what an operator needs to see.
func TestWaitScrapedReportsTargets(t *testing.T) {
	needPrometheus(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	s := start(t, Options{Dir: t.TempDir(), ScrapeInterval: 200 * time.Millisecond,
		Targets: []Target{{Job: "gone", Address: closed}}})

	if err := s.WaitScraped(context.Background(), "nosuchjob", 0); err == nil || !strings.Contains(err.Error(), `no scrape job "nosuchjob"`) {
		t.Errorf("unknown job: error %v", err)
	}
	if err := s.WaitScraped(context.Background(), "gone", 2); err == nil || !strings.Contains(err.Error(), "has 1 targets") {
		t.Errorf("n above the configured targets: error %v", err)
	}
	// Long enough for Prometheus to apply its targets (every 5s) and fail a scrape or two.
	ctx, cancel := context.WithTimeout(context.Background(), 7*time.Second)
	defer cancel()
	err = s.WaitScraped(ctx, "gone", 0)
	if err == nil {
		t.Fatal("WaitScraped succeeded on a closed port")
	}
	for _, want := range []string{"0 of 1 targets", "gone/" + closed + " down", "connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func TestStartErrors(t *testing.T) {
	fake := filepath.Join(t.TempDir(), "fake-prometheus")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'err=\"boom: cannot start\"' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    Options
		want []string
	}{
		{"no dir", Options{}, []string{"Options.Dir is required"}},
		{"missing binary", Options{Binary: "/nonexistent/prometheus"}, []string{`"/nonexistent/prometheus"`, "make deps"}},
		{"exits at once", Options{Binary: fake}, []string{"exited before it was ready", "exit status 3", "boom: cannot start"}},
		{"bad label", Options{Binary: fake, Targets: []Target{{Job: "j", Address: "127.0.0.1:1", Labels: map[string]string{"bad-name": "x"}}}}, []string{`label name "bad-name"`}},
		{"bad address", Options{Binary: fake, Targets: []Target{{Job: "j", Address: "127.0.0.1"}}}, []string{`target "127.0.0.1" of job j`}},
		{"no job", Options{Binary: fake, Targets: []Target{{Address: "127.0.0.1:1"}}}, []string{"no job name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name != "no dir" {
				tc.o.Dir = t.TempDir()
			}
			s, err := Start(context.Background(), tc.o)
			if err == nil {
				s.Close()
				t.Fatal("Start succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestCloseStopsProcess(t *testing.T) {
	needPrometheus(t)
	s := start(t, Options{Dir: t.TempDir()})
	pid := s.PID()
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("prometheus pid %d not running after Start: %v", pid, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Close reaped it, so the pid (and its process group) must be gone, not a zombie.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pid %d after Close: kill -0 = %v, want ESRCH", pid, err)
	}
	if err := syscall.Kill(-pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("process group %d after Close: kill -0 = %v, want ESRCH", pid, err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestNetns runs Prometheus and its target inside a network namespace of the test's own: the
// target listens on the namespace's loopback only, so a successful scrape and query prove that
// both Prometheus and the API connections are in there.
func TestNetns(t *testing.T) {
	needPrometheus(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip (iproute2) not installed: run `make deps`")
	}
	b := make([]byte, 4)
	rand.Read(b)
	name := "ohprom-" + hex.EncodeToString(b)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", name)
	t.Cleanup(func() { // registered first, so it runs after Prometheus and the target are closed
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ip("-n", name, "link", "set", "lo", "up")

	path := filepath.Join("/run/netns", name)
	var l net.Listener
	if err := netnsrun.Do(path, func() (err error) {
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	events := serveCounter(t, l)
	s := start(t, Options{Dir: t.TempDir(), Netns: name, ScrapeInterval: 200 * time.Millisecond,
		Targets: []Target{{Job: "agent", Address: l.Addr().String()}}})

	want, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.Stat(filepath.Join("/proc", strconv.Itoa(s.PID()), "ns/net"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(want, got) {
		t.Fatalf("prometheus pid %d is not in network namespace %s", s.PID(), name)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := s.WaitScraped(ctx, "agent", 1); err != nil {
		t.Fatal(err)
	}
	events.Add(3)
	waitValue(t, s, `ohprom_test_events_total{job="agent"}`, 3)
}
