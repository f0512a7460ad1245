// Package prom runs a real Prometheus server (Debian's prometheus package, installed by `make
// deps`) for the lab and queries it with PromQL. The server is a child process in its own
// process group, listening on a free loopback port (never the packaged service's 9090), with its
// configuration and TSDB in the caller's directory. It can run inside a network namespace, where
// the lab's agents expose their metrics, and is then queried through sockets opened there.
//
// A started Server must be closed: `defer s.Close()`, or `t.Cleanup(func() { s.Close() })` in
// tests, so that it stops on every failure path. If the parent dies without closing it (a test
// binary killed by -timeout, SIGKILL), the kernel kills Prometheus too (PR_SET_PDEATHSIG).
package prom

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/onehop-mesh/onehop/internal/netnsrun"
)

// Target is one endpoint to scrape; Address is host:port as seen from Prometheus' network
// namespace. Labels are added to every series scraped from it.
type Target struct {
	Job     string
	Address string
	Labels  map[string]string
}

// Options configure a Server. Dir is required; everything else has a default.
type Options struct {
	Binary         string        // default: "prometheus" from PATH
	Dir            string        // prometheus.yml, data/ and the default log go here
	Targets        []Target      // grouped into one scrape job per Job, in order of appearance
	ScrapeInterval time.Duration // default 1s; the scrape timeout is the same
	ListenAddress  string        // default "127.0.0.1:0"; port 0 picks a free port
	Netns          string        // network namespace name (/run/netns/NAME) or path; "" = ours
	Log            io.Writer     // Prometheus' stdout and stderr; default Dir/prometheus.log
}

const (
	readyTimeout = 30 * time.Second
	stopGrace    = 5 * time.Second
	tailSize     = 4096
)

// Server is a running Prometheus.
type Server struct {
	cmd       *exec.Cmd
	addr      string // where to dial the API (inside netns when set)
	netns     string // path, "" = ours
	transport *http.Transport
	client    *http.Client
	jobs      map[string]int // job -> configured targets
	logName   string         // for error messages
	tail      *tailBuffer

	exited    chan struct{}
	waitErr   error
	closeOnce sync.Once
	closeErr  error
}

// Start writes the configuration, starts Prometheus and waits until it reports ready. ctx bounds
// the start only; the server runs until Close.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("prom: Options.Dir is required (the caller's temporary or state directory)")
	}
	bin := o.Binary
	if bin == "" {
		bin = "prometheus"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("prometheus binary %q: %w (run `make deps` as root: it installs the Debian package prometheus)", bin, err)
	}
	if o.ScrapeInterval == 0 {
		o.ScrapeInterval = time.Second
	}
	if o.ScrapeInterval < time.Millisecond {
		return nil, fmt.Errorf("prom: scrape interval %v is below Prometheus' 1ms resolution", o.ScrapeInterval)
	}
	if o.ListenAddress == "" {
		o.ListenAddress = "127.0.0.1:0"
	}
	s := &Server{jobs: map[string]int{}, tail: &tailBuffer{}, exited: make(chan struct{})}
	if o.Netns != "" {
		s.netns = o.Netns
		if !strings.Contains(o.Netns, "/") {
			s.netns = filepath.Join("/run/netns", o.Netns)
		}
	}
	cfg, err := s.config(o)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(o.Dir, "data"), 0o755); err != nil {
		return nil, fmt.Errorf("prom: %w", err)
	}
	cfgPath := filepath.Join(o.Dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		return nil, fmt.Errorf("prom: %w", err)
	}
	listen, err := s.listenAddress(o.ListenAddress)
	if err != nil {
		return nil, err
	}

	var logFile *os.File
	if o.Log == nil {
		s.logName = filepath.Join(o.Dir, "prometheus.log")
		if logFile, err = os.OpenFile(s.logName, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return nil, fmt.Errorf("prom: %w", err)
		}
		o.Log = logFile
	} else {
		s.logName = "(Options.Log)"
	}
	s.cmd = exec.Command(path,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(o.Dir, "data"),
		"--web.listen-address="+listen,
		"--web.enable-lifecycle") // /-/reload, for a runner that changes targets mid-run
	s.cmd.WaitDelay = time.Second // if a stray child kept the log pipe open, do not hang in Wait
	// Keep a tail of the log in memory: error messages quote it even when Log is the caller's.
	s.cmd.Stdout = io.MultiWriter(o.Log, s.tail)
	s.cmd.Stderr = s.cmd.Stdout
	// Own process group: Close signals the group, and a terminal's ^C does not reach it first.
	// Pdeathsig: the kernel kills it when the thread that started it dies (Go does not end
	// threads it has not been asked to lock, so in practice: when this process dies).
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := s.cmd.Start
	if s.netns != "" {
		// A child inherits the network namespace of the thread that forks it, so fork from a
		// thread switched into the namespace: no nsenter or `ip netns exec` (which also remounts
		// /sys) and the pid we hold is Prometheus' own.
		start = func() error { return netnsrun.Do(s.netns, s.cmd.Start) }
	}
	if err := start(); err != nil {
		if logFile != nil {
			logFile.Close()
		}
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		if logFile != nil {
			logFile.Close()
		}
		close(s.exited)
	}()

	// A bare Transport takes no proxy from the environment: the API is on loopback.
	s.transport = &http.Transport{DialContext: s.dial}
	s.client = &http.Client{Transport: s.transport}
	if err := s.waitReady(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Addr is the API's host:port, inside Options.Netns when one was given.
func (s *Server) Addr() string { return s.addr }

// PID is Prometheus' process id (and its process group id).
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Close stops Prometheus (SIGTERM to its process group, SIGKILL after 5s) and waits for it. It
// may be called more than once; it returns an error only if SIGKILL was needed.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.transport != nil {
			s.transport.CloseIdleConnections()
		}
		select {
		case <-s.exited:
			return
		default:
		}
		pgid := s.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(stopGrace):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-s.exited
			s.closeErr = fmt.Errorf("prometheus (pid %d) did not stop within %v of SIGTERM and was killed; log %s:\n%s", pgid, stopGrace, s.logName, s.tail)
		}
	})
	return s.closeErr
}

// waitReady polls /-/ready until Prometheus has loaded its config and opened its TSDB.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Transport: s.transport, Timeout: time.Second}
	var last error
	for {
		resp, err := client.Get("http://" + s.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/-/ready: %s", resp.Status)
		}
		last = err
		select {
		case <-s.exited:
			return fmt.Errorf("prometheus %s exited before it was ready (%v); log %s:\n%s", s.cmd.Path, s.waitErr, s.logName, s.tail)
		case <-ctx.Done():
			return fmt.Errorf("prometheus %s not ready on %s: %w (last: %v); log %s:\n%s", s.cmd.Path, s.addr, ctx.Err(), last, s.logName, s.tail)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dial opens API connections in Prometheus' network namespace: a socket stays in the namespace
// it was created in, whatever thread later uses it.
func (s *Server) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if s.netns == "" {
		return d.DialContext(ctx, network, s.addr)
	}
	var c net.Conn
	err := netnsrun.Do(s.netns, func() (err error) {
		c, err = d.DialContext(ctx, network, s.addr)
		return err
	})
	return c, err
}

// listenAddress resolves port 0 to a free port in Prometheus' namespace (Prometheus cannot report
// a port it picked itself) and sets s.addr. The port is released just before Prometheus binds
// it; only another bind(0) in that instant could take it, and Start would then fail clearly.
func (s *Server) listenAddress(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("prom: listen address %q: %w", listen, err)
	}
	if port == "0" {
		pick := func() error {
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			port = strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
			return l.Close()
		}
		if s.netns != "" {
			err = netnsrun.Do(s.netns, pick)
		} else {
			err = pick()
		}
		if err != nil {
			return "", fmt.Errorf("prom: pick a free port for %s: %w", listen, err)
		}
	}
	dialHost := host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		dialHost = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			dialHost = "::1"
		}
	}
	s.addr = net.JoinHostPort(dialHost, port)
	return net.JoinHostPort(host, port), nil
}

var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// config renders prometheus.yml: one scrape job per Job, one static config per target so that
// each keeps its own labels.
func (s *Server) config(o Options) ([]byte, error) {
	type static struct {
		Targets []string          `yaml:"targets"`
		Labels  map[string]string `yaml:"labels,omitempty"`
	}
	type job struct {
		Name   string   `yaml:"job_name"`
		Static []static `yaml:"static_configs"`
	}
	every := fmt.Sprintf("%dms", o.ScrapeInterval.Milliseconds())
	var cfg struct {
		Global struct {
			ScrapeInterval string `yaml:"scrape_interval"`
			ScrapeTimeout  string `yaml:"scrape_timeout"` // must not exceed the interval
		} `yaml:"global"`
		Jobs []*job `yaml:"scrape_configs"`
	}
	cfg.Global.ScrapeInterval, cfg.Global.ScrapeTimeout = every, every
	byName := map[string]*job{}
	for _, t := range o.Targets {
		if t.Job == "" {
			return nil, fmt.Errorf("prom: target %q has no job name", t.Address)
		}
		if _, _, err := net.SplitHostPort(t.Address); err != nil {
			return nil, fmt.Errorf("prom: target %q of job %s: want host:port: %w", t.Address, t.Job, err)
		}
		for k := range t.Labels {
			if !labelName.MatchString(k) || strings.HasPrefix(k, "__") {
				return nil, fmt.Errorf("prom: target %s of job %s: label name %q must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __", t.Address, t.Job, k)
			}
		}
		j := byName[t.Job]
		if j == nil {
			j = &job{Name: t.Job}
			byName[t.Job] = j
			cfg.Jobs = append(cfg.Jobs, j)
		}
		j.Static = append(j.Static, static{Targets: []string{t.Address}, Labels: t.Labels})
		s.jobs[t.Job]++
	}
	return yaml.Marshal(&cfg)
}

// tailBuffer keeps the last tailSize bytes written to it.
type tailBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > 2*tailSize { // trim now and then, not on every write
		t.b = append([]byte(nil), t.b[len(t.b)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b[max(0, len(t.b)-tailSize):])
}
