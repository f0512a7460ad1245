// Command onehop-agent is the onehop data plane agent: it takes xDS configuration (istiod, or
// the lab's control plane), programs eBPF maps, and balances service connections in the kernel
// at connect() time. It runs once per node with host networking.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/model"
	"github.com/onehop-mesh/onehop/dataplane/xds"
)

// config holds the flags; every flag can also be set by the environment variable named beside it
// (what a DaemonSet manifest sets).
type config struct {
	nodeID, xdsAddr, cgroup, bpffs, metricsAddr, adminSocket, logLevel, pprofAddr string
	delta, trackConns, uninstall                                                  bool
	memoryLimit                                                                   int64 // bytes; 0: none
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("onehop-agent", flag.ContinueOnError)
	fs.StringVar(&c.nodeID, "node-id", envOr("ONEHOP_NODE_ID", ""), "xDS node id, e.g. the node name [ONEHOP_NODE_ID]")
	fs.StringVar(&c.xdsAddr, "xds-address", envOr("ONEHOP_XDS_ADDRESS", "istiod.istio-system.svc:15010"), "xDS server host:port (ADS, plaintext gRPC) [ONEHOP_XDS_ADDRESS]")
	fs.StringVar(&c.cgroup, "cgroup", envOr("ONEHOP_CGROUP", "/sys/fs/cgroup"), "cgroup v2 directory whose processes are served [ONEHOP_CGROUP]")
	fs.StringVar(&c.bpffs, "bpffs", envOr("ONEHOP_BPFFS", "/sys/fs/bpf/onehop"),
		"bpffs directory where maps and program links are pinned: they outlive the agent, which adopts them when it starts again, "+
			"so a restart does not interrupt traffic; empty: nothing pinned, programs detach when the agent exits [ONEHOP_BPFFS]")
	fs.BoolVar(&c.uninstall, "uninstall", false,
		"detach the programs pinned under --bpffs and remove every onehop pin there, check nothing of onehop's is left attached to --cgroup, and exit")
	fs.StringVar(&c.metricsAddr, "metrics-address", envOr("ONEHOP_METRICS_ADDRESS", ":15020"), "address of /healthz, /readyz, /metrics; empty disables [ONEHOP_METRICS_ADDRESS]")
	fs.StringVar(&c.adminSocket, "admin-socket", envOr("ONEHOP_ADMIN_SOCKET", "/run/onehop/agent.sock"), "unix socket of the same API plus /enroll [ONEHOP_ADMIN_SOCKET]")
	fs.StringVar(&c.pprofAddr, "pprof-address", envOr("ONEHOP_PPROF_ADDRESS", ""), "address of Go's /debug/pprof/ (profiling); empty disables [ONEHOP_PPROF_ADDRESS]")
	fs.StringVar(&c.logLevel, "log-level", envOr("ONEHOP_LOG_LEVEL", "info"), "debug, info, warn or error [ONEHOP_LOG_LEVEL]")
	track, _ := strconv.ParseBool(envOr("ONEHOP_TRACK_CONNECTIONS", "true"))
	fs.BoolVar(&c.trackConns, "track-connections", track, "track established connections with sockops (costs a few percent of a new connection's latency) [ONEHOP_TRACK_CONNECTIONS]")
	delta, _ := strconv.ParseBool(envOr("ONEHOP_XDS_DELTA", "false"))
	fs.BoolVar(&c.delta, "delta", delta, "use incremental (Delta) xDS instead of State-of-the-World [ONEHOP_XDS_DELTA]")
	memLimit := fs.String("memory-limit", envOr("ONEHOP_MEMORY_LIMIT", defaultMemoryLimit),
		"soft limit of the agent's Go memory, e.g. 75MiB or 1GiB; 0 disables; GOMEMLIMIT, when set, wins [ONEHOP_MEMORY_LIMIT]")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.memoryLimit, err = parseBytes(*memLimit); err != nil {
		return c, fmt.Errorf("--memory-limit: %w", err)
	}
	if c.uninstall && c.bpffs == "" {
		return c, errors.New("--uninstall needs --bpffs: the directory the agent pinned in")
	}
	if c.nodeID == "" && !c.uninstall {
		return c, errors.New("--node-id is required (the node's name, as the control plane knows it)")
	}
	return c, nil
}

// defaultMemoryLimit keeps the agent under 100 MB resident with 10,000 services of 10
// endpoints (about 50 MB of live heap): the garbage collector runs more often near the limit
// instead of letting the heap double. It is soft: a bigger config gets the memory it needs, at
// the cost of more collection; raise it for much bigger meshes.
const defaultMemoryLimit = "75MiB"

// parseBytes reads a size as GOMEMLIMIT writes it: an integer with an optional B, KiB, MiB or
// GiB suffix.
func parseBytes(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a size (write e.g. 75MiB, 1GiB or 0)", s)
	}
	return n * mult, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "onehop-agent:", err)
		os.Exit(2)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.logLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "onehop-agent: --log-level:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("node", cfg.nodeID)
	if _, set := os.LookupEnv("GOMEMLIMIT"); !set && cfg.memoryLimit > 0 {
		debug.SetMemoryLimit(cfg.memoryLimit)
	}
	if cfg.uninstall {
		if err := uninstall(cfg, log); err != nil {
			log.Error("uninstall", "err", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// How long programming a translated config into the maps takes (the diff apply).
	applySeconds := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "onehop_agent_apply_duration_seconds",
		Help:    "Time to program one xDS config into the BPF maps.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)})
	reg.MustRegister(applySeconds)
	dpm, err := datapath.NewMetrics(reg)
	if err != nil {
		return err
	}
	opts := datapath.Options{Metrics: dpm, NoConnTracking: !cfg.trackConns, PinDir: cfg.bpffs}
	dp, err := datapath.Load(opts)
	if errors.Is(err, datapath.ErrNotBPFFS) {
		// Serve anyway, as an agent without --bpffs would: balancing beats not starting.
		log.Warn("pinning off: restarts interrupt traffic and programs detach when the agent exits; mount a bpffs (mount -t bpf bpf /sys/fs/bpf) to pin", "err", err)
		opts.PinDir = ""
		dp, err = datapath.Load(opts)
	}
	if err != nil {
		return err
	}
	defer dp.Close()
	logAdopted(log, opts.PinDir, dp.Adopted())
	if err := dp.Attach(cfg.cgroup); err != nil {
		return err
	}
	log.Info("programs attached", "cgroup", cfg.cgroup, "pinned", opts.PinDir != "")

	program := func(c model.Config, apply func() (datapath.ApplyStats, error)) error {
		start := time.Now()
		st, err := apply()
		applySeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			log.Info("programmed", "services", len(c.Services), "took", time.Since(start), "stats", fmt.Sprintf("%+v", st))
		}
		return err
	}
	client := &xds.Client{Addr: cfg.xdsAddr, NodeID: cfg.nodeID, Delta: cfg.delta, Log: log.With("component", "xds"),
		Metrics: xds.NewMetrics(reg),
		Apply: func(c model.Config) error {
			return program(c, func() (datapath.ApplyStats, error) { return dp.Programmer.Apply(c) })
		},
		ApplyChanged: func(c model.Config, changed []model.Key) error {
			return program(c, func() (datapath.ApplyStats, error) { return dp.Programmer.ApplyChanged(c, changed) })
		}}
	srv := &agent.Server{Enroller: dp.Enrollment, Ready: client.Ready, Healthy: func() error { return nil }, Registry: reg, Log: log,
		Status: func() any { return dp.Programmer.Programmed() }}
	var servers []*http.Server
	serve := func(l net.Listener) {
		s := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go s.Serve(l)
	}
	if cfg.adminSocket != "" {
		os.Remove(cfg.adminSocket)
		l, err := net.Listen("unix", cfg.adminSocket)
		if err != nil {
			return fmt.Errorf("admin socket %s: %w", cfg.adminSocket, err)
		}
		defer os.Remove(cfg.adminSocket)
		serve(l)
	}
	if cfg.pprofAddr != "" {
		l, err := net.Listen("tcp", cfg.pprofAddr)
		if err != nil {
			return fmt.Errorf("pprof address %s: %w", cfg.pprofAddr, err)
		}
		// Its own server: the profiling handlers stay off the metrics and admin endpoints.
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		s := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go s.Serve(l)
	}
	if cfg.metricsAddr != "" {
		l, err := net.Listen("tcp", cfg.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics address %s: %w", cfg.metricsAddr, err)
		}
		serve(l)
	}
	log.Info("connecting to the control plane", "xds", cfg.xdsAddr, "delta", cfg.delta)
	err = client.Run(ctx)
	for _, s := range servers {
		s.Close()
	}
	if ctx.Err() != nil { // stopped by a signal (Run returns nil or context.Canceled)
		if opts.PinDir != "" {
			log.Info("stopping: programs stay attached and pinned, balancing with the last config until the next agent adopts them; --uninstall removes them", "bpffs", opts.PinDir)
		} else {
			log.Info("stopping: programs are detached with the agent (nothing pinned)")
		}
		return nil
	}
	return err
}

func logAdopted(log *slog.Logger, pinDir string, a datapath.Adopted) {
	if pinDir == "" {
		return
	}
	attrs := []any{"bpffs", pinDir, "layout", datapath.LayoutVersion, "links", len(a.Links), "services", a.Services,
		"enrolled_netns", len(a.Enrolled), "connections", a.Conns}
	switch {
	case a.Layout == 0:
		log.Info("nothing pinned yet: created and pinned the maps", "bpffs", pinDir, "layout", datapath.LayoutVersion)
	case a.Layout < datapath.LayoutVersion:
		log.Info("migrated the pinned datapath of an older agent; traffic was balanced throughout", append(attrs, "from_layout", a.Layout)...)
	default:
		log.Info("adopted the pinned datapath of the previous agent; traffic was balanced throughout", attrs...)
	}
	for _, n := range a.Notes {
		log.Info("pinned datapath: " + n)
	}
}

// uninstall removes what agents pinned under --bpffs; onehop programs still attached to --cgroup
// afterwards are held by a running agent, which is an error: it would keep balancing.
func uninstall(cfg config, log *slog.Logger) error {
	u, err := datapath.Uninstall(cfg.bpffs)
	if err != nil {
		return err
	}
	log.Info("uninstalled", "bpffs", cfg.bpffs, "links_detached", u.Links, "pins_removed", u.Pins)
	if cfg.cgroup == "" {
		return nil
	}
	left, err := datapath.AttachedPrograms(cfg.cgroup)
	if err != nil {
		log.Warn("could not check what is attached to the cgroup", "cgroup", cfg.cgroup, "err", err)
		return nil
	}
	if len(left) > 0 {
		return fmt.Errorf("onehop programs %v are still attached to %s: a running onehop-agent holds them; stop it", left, cfg.cgroup)
	}
	return nil
}
