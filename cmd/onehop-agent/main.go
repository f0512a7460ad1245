// Command onehop-agent is the onehop data plane agent: it takes xDS configuration (istiod, or
// the lab's control plane), programs eBPF maps, and balances service connections in the kernel
// at connect() time. It runs once per node with host networking.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
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
	"github.com/onehop-mesh/onehop/dataplane/telemetry"
	"github.com/onehop-mesh/onehop/dataplane/workload"
	"github.com/onehop-mesh/onehop/dataplane/xds"
)

// config holds the flags; every flag can also be set by the environment variable named beside it
// (what a DaemonSet manifest sets).
type config struct {
	nodeID, xdsAddr, cgroup, bpffs, metricsAddr, adminSocket, logLevel, pprofAddr string
	delta, trackConns, uninstall, sockmap                                         bool
	memoryLimit                                                                   int64 // bytes; 0: none
	mode                                                                          string
	id                                                                            xds.Identity
	fetchTimeout                                                                  time.Duration
	telemetry                                                                     telemetryConfig
	kube                                                                          kubeConfig
}

// telemetryConfig is how connections are reported (see dataplane/telemetry).
type telemetryConfig struct {
	on          bool          // default of each enrollment
	accessLog   string        // "": none, "-": stdout, else a file
	period      time.Duration // periodic report of a long connection
	long        time.Duration // connections this old get series of their own
	eventBuffer int64         // bytes of oh_events
	stateFile   string        // enrollments kept across restarts
}

// Modes of taking configuration from the control plane.
const (
	modeEnvoy    = "envoy"    // Envoy xDS (LDS, RDS, CDS, EDS), as istiod serves a sidecar
	modeWorkload = "workload" // Istio's ambient workload API, as istiod serves ztunnel
)

// envOr returns the first of the environment variables that is set, else def. Later names are
// the ones Istio's own DaemonSets set (POD_NAME, INSTANCE_IP, ...).
func envOr(def string, names ...string) string {
	for _, n := range names {
		if v, ok := os.LookupEnv(n); ok {
			return v
		}
	}
	return def
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("onehop-agent", flag.ContinueOnError)
	fs.StringVar(&c.nodeID, "node-id", envOr("", "ONEHOP_NODE_ID", "NODE_NAME"),
		"the node's name; or, with '~' in it, the whole xDS node id as istiod parses it (<type>~<ip>~<pod>.<ns>~<ns>.svc.<domain>) [ONEHOP_NODE_ID, NODE_NAME]")
	fs.StringVar(&c.mode, "xds-mode", envOr(modeEnvoy, "ONEHOP_XDS_MODE"),
		"envoy: Envoy xDS as istiod serves a sidecar (one namespace's view: --pod-namespace); workload: Istio's ambient workload API as istiod serves ztunnel (the whole mesh, with waypoints) [ONEHOP_XDS_MODE]")
	fs.StringVar(&c.id.ProxyType, "proxy-type", envOr("", "ONEHOP_PROXY_TYPE"), "the node type told to istiod: sidecar (default in envoy mode) or ztunnel (workload mode) [ONEHOP_PROXY_TYPE]")
	nodeIP := fs.String("node-ip", envOr("", "ONEHOP_NODE_IP", "INSTANCE_IP"), "the agent's IP told to istiod; default: the host's first global unicast address [ONEHOP_NODE_IP, INSTANCE_IP]")
	fs.StringVar(&c.id.PodName, "pod-name", envOr("", "ONEHOP_POD_NAME", "POD_NAME"), "the agent's pod name told to istiod; default: onehop-agent-<node> [ONEHOP_POD_NAME, POD_NAME]")
	fs.StringVar(&c.id.Namespace, "pod-namespace", envOr("istio-system", "ONEHOP_POD_NAMESPACE", "POD_NAMESPACE"),
		"the agent's namespace told to istiod: in envoy mode the agent sees the services exported to it [ONEHOP_POD_NAMESPACE, POD_NAMESPACE]")
	fs.StringVar(&c.id.ClusterID, "cluster-id", envOr("Kubernetes", "ONEHOP_CLUSTER_ID", "CLUSTER_ID"), "istiod's name of this cluster (CLUSTER_ID; without it istiod withholds cluster-local endpoints) [ONEHOP_CLUSTER_ID, CLUSTER_ID]")
	fs.StringVar(&c.id.DNSDomain, "dns-domain", envOr("cluster.local", "ONEHOP_DNS_DOMAIN"), "the cluster's DNS domain [ONEHOP_DNS_DOMAIN]")
	fs.StringVar(&c.id.Version, "istio-version", envOr(xds.IstioVersion, "ONEHOP_ISTIO_VERSION"), "ISTIO_VERSION told to istiod [ONEHOP_ISTIO_VERSION]")
	fs.StringVar(&c.xdsAddr, "xds-address", envOr("istiod.istio-system.svc:15010", "ONEHOP_XDS_ADDRESS"), "xDS server host:port (ADS, plaintext gRPC) [ONEHOP_XDS_ADDRESS]")
	fs.StringVar(&c.cgroup, "cgroup", envOr("/sys/fs/cgroup", "ONEHOP_CGROUP"), "cgroup v2 directory whose processes are served [ONEHOP_CGROUP]")
	fs.StringVar(&c.bpffs, "bpffs", envOr("/sys/fs/bpf/onehop", "ONEHOP_BPFFS"),
		"bpffs directory where maps and program links are pinned: they outlive the agent, which adopts them when it starts again, "+
			"so a restart does not interrupt traffic; empty: nothing pinned, programs detach when the agent exits [ONEHOP_BPFFS]")
	fs.BoolVar(&c.uninstall, "uninstall", false,
		"detach the programs pinned under --bpffs and remove every onehop pin there, check nothing of onehop's is left attached to --cgroup, and exit")
	fs.StringVar(&c.metricsAddr, "metrics-address", envOr(":15020", "ONEHOP_METRICS_ADDRESS"), "address of /healthz, /readyz, /metrics; empty disables [ONEHOP_METRICS_ADDRESS]")
	fs.StringVar(&c.adminSocket, "admin-socket", envOr("/run/onehop/agent.sock", "ONEHOP_ADMIN_SOCKET"), "unix socket of the same API plus /enroll [ONEHOP_ADMIN_SOCKET]")
	fs.StringVar(&c.pprofAddr, "pprof-address", envOr("", "ONEHOP_PPROF_ADDRESS"), "address of Go's /debug/pprof/ (profiling); empty disables [ONEHOP_PPROF_ADDRESS]")
	fs.StringVar(&c.logLevel, "log-level", envOr("info", "ONEHOP_LOG_LEVEL"), "debug, info, warn or error [ONEHOP_LOG_LEVEL]")
	track, _ := strconv.ParseBool(envOr("true", "ONEHOP_TRACK_CONNECTIONS"))
	fs.BoolVar(&c.trackConns, "track-connections", track, "track established connections with sockops (costs a few percent of a new connection's latency) [ONEHOP_TRACK_CONNECTIONS]")
	delta, _ := strconv.ParseBool(envOr("false", "ONEHOP_XDS_DELTA"))
	fs.BoolVar(&c.delta, "delta", delta, "use incremental (Delta) xDS instead of State-of-the-World [ONEHOP_XDS_DELTA]")
	fs.DurationVar(&c.fetchTimeout, "initial-fetch-timeout", xds.DefaultInitialFetchTimeout,
		"envoy mode: how long an endpoint assignment or route configuration the config names may take to arrive before it is taken as empty [ONEHOP_INITIAL_FETCH_TIMEOUT]")
	tel, _ := strconv.ParseBool(envOr("true", "ONEHOP_TELEMETRY"))
	fs.BoolVar(&c.telemetry.on, "telemetry", tel,
		"report connections (Istio's istio_tcp_* metrics and onehop_tcp_*, from the kernel) of pods whose enrollment does not say otherwise; off costs nothing per connection [ONEHOP_TELEMETRY]")
	fs.StringVar(&c.telemetry.accessLog, "access-log", envOr("", "ONEHOP_ACCESS_LOG"),
		"write an access log of JSON lines (open, periodic report, close, failed connect) to this file, or - for stdout; pods are logged unless their enrollment says access_log false; empty: off [ONEHOP_ACCESS_LOG]")
	sm, _ := strconv.ParseBool(envOr("false", "ONEHOP_SOCKMAP"))
	fs.BoolVar(&c.sockmap, "sockmap", sm,
		"accelerate same-node connections of pods whose enrollment does not say otherwise: payloads go from socket to socket (sockmap, sk_msg), skipping TCP/IP; off costs nothing [ONEHOP_SOCKMAP]")
	fs.DurationVar(&c.telemetry.period, "telemetry-period", 5*time.Second, "report a long-lived connection at most this often [ONEHOP_TELEMETRY_PERIOD]")
	fs.DurationVar(&c.telemetry.long, "long-connection", 30*time.Second, "connections at least this old get metric series of their own until they close [ONEHOP_LONG_CONNECTION]")
	evBuf := fs.String("event-buffer", envOr("2MiB", "ONEHOP_EVENT_BUFFER"), "size of the kernel's ring buffer of connection events (a power of two) [ONEHOP_EVENT_BUFFER]")
	fs.StringVar(&c.telemetry.stateFile, "state-file", envOr("", "ONEHOP_STATE_FILE"),
		"where enrollments (netns, options, pod metadata) are kept across restarts; default: --admin-socket with .enrolled.json for its extension [ONEHOP_STATE_FILE]")
	// Duration flags take their variable through fs.Set, which parses it as the flag would.
	for _, d := range [][2]string{{"initial-fetch-timeout", "ONEHOP_INITIAL_FETCH_TIMEOUT"},
		{"telemetry-period", "ONEHOP_TELEMETRY_PERIOD"}, {"long-connection", "ONEHOP_LONG_CONNECTION"}} {
		if v, ok := os.LookupEnv(d[1]); ok {
			if err := fs.Set(d[0], v); err != nil {
				return c, fmt.Errorf("%s: %w", d[1], err)
			}
		}
	}
	kubeOn, _ := strconv.ParseBool(envOr("false", "ONEHOP_KUBERNETES"))
	fs.BoolVar(&c.kube.on, "kubernetes", kubeOn,
		"Kubernetes mode: watch this node's pods (--node-id is the node's name) and enroll those of namespaces or pods labelled istio.io/dataplane-mode=onehop [ONEHOP_KUBERNETES]")
	fs.StringVar(&c.kube.kubeconfig, "kubeconfig", envOr("", "KUBECONFIG"),
		"Kubernetes mode: the API server's kubeconfig; empty: the pod's in-cluster config (service account) [KUBECONFIG]")
	fs.StringVar(&c.kube.procRoot, "proc", envOr("/proc", "ONEHOP_PROC"),
		"Kubernetes mode: the host's /proc, where pods' processes and network namespaces are found (hostPID, or the host's /proc mounted here) [ONEHOP_PROC]")
	uod, _ := strconv.ParseBool(envOr("false", "ONEHOP_UNINSTALL_ON_DELETE"))
	fs.BoolVar(&c.kube.uninstallOnDelete, "uninstall-on-delete", uod,
		"Kubernetes mode: when stopping, if the agent's own DaemonSet (owner of POD_NAME) is deleted or being deleted, remove the node's programs and pins as --uninstall does; on a restart or rolling update they stay [ONEHOP_UNINSTALL_ON_DELETE]")
	memLimit := fs.String("memory-limit", envOr(defaultMemoryLimit, "ONEHOP_MEMORY_LIMIT"),
		"soft limit of the agent's Go memory, e.g. 75MiB or 1GiB; 0 disables; GOMEMLIMIT, when set, wins [ONEHOP_MEMORY_LIMIT]")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	var err error
	if c.memoryLimit, err = parseBytes(*memLimit); err != nil {
		return c, fmt.Errorf("--memory-limit: %w", err)
	}
	if c.telemetry.eventBuffer, err = parseBytes(*evBuf); err != nil {
		return c, fmt.Errorf("--event-buffer: %w", err)
	}
	if err := datapath.CheckEventBytes(int(c.telemetry.eventBuffer)); err != nil {
		return c, fmt.Errorf("--event-buffer %s: %w", *evBuf, err)
	}
	if c.telemetry.period <= 0 || c.telemetry.long <= 0 {
		return c, errors.New("--telemetry-period and --long-connection must be positive")
	}
	if c.sockmap && !c.trackConns {
		return c, errors.New("--sockmap needs --track-connections: the sockops program that tracks connections is the one that adds them to the sockmap")
	}
	if (c.telemetry.on || c.telemetry.accessLog != "") && !c.trackConns {
		return c, errors.New("--telemetry and --access-log need --track-connections: connections are reported by the program that tracks them; pass --telemetry=false to run without")
	}
	if c.telemetry.stateFile == "" && c.adminSocket != "" {
		// agent.sock -> agent.enrolled.json: agents of one host (the lab's nodes) keep apart.
		c.telemetry.stateFile = strings.TrimSuffix(c.adminSocket, filepath.Ext(c.adminSocket)) + ".enrolled.json"
	}
	if c.uninstall && c.bpffs == "" {
		return c, errors.New("--uninstall needs --bpffs: the directory the agent pinned in")
	}
	if c.uninstall {
		return c, nil
	}
	if c.kube.uninstallOnDelete && !c.kube.on {
		return c, errors.New("--uninstall-on-delete needs --kubernetes: only there does the agent have a DaemonSet whose deletion it can see")
	}
	if c.kube.on && c.telemetry.stateFile == "" {
		// Without it a restarted agent could not tell its enrollments from the admin API's, and
		// would never unenroll a pod whose label was removed while it was down.
		return c, errors.New("--kubernetes needs --state-file (or an --admin-socket, which names the default one)")
	}
	if c.nodeID == "" {
		return c, errors.New("--node-id is required (the node's name, as the control plane knows it)")
	}
	if err := c.identity(*nodeIP); err != nil {
		return c, err
	}
	return c, nil
}

// identity completes c.id from the flags and their defaults and checks it.
func (c *config) identity(nodeIP string) error {
	switch c.mode {
	case modeEnvoy:
		c.id.ProxyType = cmp.Or(c.id.ProxyType, "sidecar")
	case modeWorkload:
		c.id.ProxyType = cmp.Or(c.id.ProxyType, "ztunnel")
		if c.id.ProxyType != "ztunnel" {
			return fmt.Errorf("--proxy-type %s: istiod serves the workload API to ztunnel nodes only", c.id.ProxyType)
		}
		c.delta = true // the workload API is Delta only
	default:
		return fmt.Errorf("--xds-mode %q: want %s or %s", c.mode, modeEnvoy, modeWorkload)
	}
	c.id.NodeName = c.nodeID
	if strings.Contains(c.nodeID, "~") {
		c.id.RawID = c.nodeID
		c.id.NodeName = ""
	}
	c.id.PodName = cmp.Or(c.id.PodName, "onehop-agent-"+c.nodeID)
	var err error
	if nodeIP != "" {
		if c.id.IP, err = netip.ParseAddr(nodeIP); err != nil {
			return fmt.Errorf("--node-ip %q is not an IP", nodeIP)
		}
	} else if c.id.RawID == "" {
		// istiod uses a sidecar's IP to find its own inbound services, which a node agent
		// has none of: without a global address, loopback identifies it as well.
		if c.id.IP, err = xds.HostIP(); err != nil {
			c.id.IP = netip.AddrFrom4([4]byte{127, 0, 0, 1})
		}
	}
	if err := c.id.Check(); err != nil {
		return fmt.Errorf("node identity: %w", err)
	}
	return nil
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
	uninstallNow, err := run(ctx, cfg, log)
	if err != nil {
		log.Error("exiting", "err", err)
		os.Exit(1)
	}
	if uninstallNow {
		// After run: its programs and maps are closed, so the pins are the last references.
		if err := uninstall(cfg, log); err != nil {
			log.Error("uninstall on delete", "err", err)
			os.Exit(1)
		}
	}
}

// run serves until ctx is done. uninstallNow asks for --uninstall once everything is closed
// (Kubernetes mode, its DaemonSet deleted).
func run(ctx context.Context, cfg config, log *slog.Logger) (uninstallNow bool, err error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// How long programming a translated config into the maps takes (the diff apply).
	applySeconds := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "onehop_agent_apply_duration_seconds",
		Help:    "Time to program one xDS config into the BPF maps.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)})
	reg.MustRegister(applySeconds)
	dpm, err := datapath.NewMetrics(reg)
	if err != nil {
		return false, err
	}
	opts := datapath.Options{Metrics: dpm, NoConnTracking: !cfg.trackConns, PinDir: cfg.bpffs,
		EventBytes: int(cfg.telemetry.eventBuffer), ReportPeriod: cfg.telemetry.period}
	dp, err := datapath.Load(opts)
	if errors.Is(err, datapath.ErrNotBPFFS) {
		// Serve anyway, as an agent without --bpffs would: balancing beats not starting.
		log.Warn("pinning off: restarts interrupt traffic and programs detach when the agent exits; mount a bpffs (mount -t bpf bpf /sys/fs/bpf) to pin", "err", err)
		opts.PinDir = ""
		dp, err = datapath.Load(opts)
	}
	if err != nil {
		return false, err
	}
	defer dp.Close()
	logAdopted(log, opts.PinDir, dp.Adopted())
	if err := dp.Attach(cfg.cgroup); err != nil {
		return false, err
	}
	log.Info("programs attached", "cgroup", cfg.cgroup, "pinned", opts.PinDir != "")

	programmed := &telemetry.Programmed{} // the services telemetry names connections after
	program := func(c model.Config, apply func() (datapath.ApplyStats, error)) error {
		start := time.Now()
		st, err := apply()
		applySeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			log.Info("programmed", "services", len(c.Services), "took", time.Since(start), "stats", fmt.Sprintf("%+v", st))
			if cfg.mode == modeWorkload {
				// The workload API's translation updates its map in place, between applies.
				c.Services = maps.Clone(c.Services)
			}
			programmed.Set(&c)
		}
		return err
	}
	apply := func(c model.Config) error {
		return program(c, func() (datapath.ApplyStats, error) { return dp.Programmer.Apply(c) })
	}
	applyChanged := func(c model.Config, changed []model.Key) error {
		return program(c, func() (datapath.ApplyStats, error) { return dp.Programmer.ApplyChanged(c, changed) })
	}
	node := cfg.id.Node()
	pods := &telemetry.Pods{}
	dirs := telemetry.Directories{pods}
	var follow follower
	var status, list func() any
	switch cfg.mode {
	case modeWorkload:
		wc := &workload.Client{Addr: cfg.xdsAddr, Node: node, Log: log.With("component", "workload-api"), Adopted: dp.Adopted().Services,
			Metrics: workload.NewMetrics(reg), Apply: apply, ApplyChanged: applyChanged}
		follow = wc
		dirs = append(dirs, workloadDirectory{wc})
		list = func() any { return wc.Services() }
		status = func() any {
			return struct {
				Mode   string `json:"mode"`
				NodeID string `json:"node_id"`
				workload.Status
			}{cfg.mode, node.GetId(), wc.Status()}
		}
	default:
		client := &xds.Client{Addr: cfg.xdsAddr, Node: node, Delta: cfg.delta, Log: log.With("component", "xds"),
			Metrics: xds.NewMetrics(reg), Adopted: dp.Adopted().Services, InitialFetchTimeout: cfg.fetchTimeout, Apply: apply, ApplyChanged: applyChanged}
		follow = client
		list = func() any { return client.Services() }
		status = func() any {
			st := xdsStatus{Mode: cfg.mode, NodeID: node.GetId(), Delta: cfg.delta, Report: client.Report(), HeldEmpty: client.HeldEmpty()}
			if err := client.LastError(); err != nil {
				st.LastError = err.Error()
			}
			return st
		}
	}
	dirs = append(dirs, programmed)
	tel, err := newTelemetry(ctx, cfg.telemetry, dp, reg, pods, dirs, log)
	if err != nil {
		return false, err
	}
	defer tel.close()
	srv := &agent.Server{Enroller: dp.Enrollment, Ready: follow.Ready, Healthy: func() error { return nil }, Registry: reg, Log: log,
		Status: func() any { return dp.Programmer.Programmed() }, Config: status, Services: list,
		Defaults:  datapath.NetnsOptions{Telemetry: cfg.telemetry.on, AccessLog: cfg.telemetry.accessLog != "", Sockmap: cfg.sockmap},
		StateFile: cfg.telemetry.stateFile,
		OnEnroll: func(e agent.Enrollment, on bool) {
			tel.enrolled(e, on)
			// A pod accelerated by sockmap is a same-node peer for the others.
			if err := dp.SetLocal(e.PodIPs, on && e.Options.Sockmap); err != nil {
				log.Warn("same-node addresses not updated: connections to the pod are not accelerated", "netns", e.Netns, "err", err)
			}
		}}
	if n, err := srv.Restore(); err != nil {
		log.Warn("enrollments of the previous agent not restored: their pods' metric labels are unknown until enrolled again", "file", cfg.telemetry.stateFile, "err", err)
	} else if n > 0 {
		log.Info("restored the previous agent's enrollments", "pods", n, "file", cfg.telemetry.stateFile)
	}
	tel.start()
	var km *kubeMode
	if cfg.kube.on {
		// After Restore: the controller's first pass starts from the enrollments kept.
		if km, err = startKubernetes(ctx, cfg, srv, log); err != nil {
			return false, err
		}
		srv.Ready = func() bool { return follow.Ready() && km.ready() }
	}
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
			return false, fmt.Errorf("admin socket %s: %w", cfg.adminSocket, err)
		}
		defer os.Remove(cfg.adminSocket)
		serve(l)
	}
	if cfg.pprofAddr != "" {
		l, err := net.Listen("tcp", cfg.pprofAddr)
		if err != nil {
			return false, fmt.Errorf("pprof address %s: %w", cfg.pprofAddr, err)
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
			return false, fmt.Errorf("metrics address %s: %w", cfg.metricsAddr, err)
		}
		serve(l)
	}
	log.Info("connecting to the control plane", "xds", cfg.xdsAddr, "mode", cfg.mode, "delta", cfg.delta, "node_id", node.GetId())
	err = follow.Run(ctx)
	for _, s := range servers {
		s.Close()
	}
	if ctx.Err() != nil { // stopped by a signal (Run returns nil or context.Canceled)
		if km != nil && km.deletion != nil && opts.PinDir != "" && km.deletion.Deleting(context.Background()) {
			log.Info("stopping: the agent's DaemonSet is deleted, so the node's programs and pins are removed (uninstall on delete)", "bpffs", opts.PinDir)
			return true, nil
		}
		if opts.PinDir != "" {
			log.Info("stopping: programs stay attached and pinned, balancing with the last config until the next agent adopts them; --uninstall removes them", "bpffs", opts.PinDir)
		} else {
			log.Info("stopping: programs are detached with the agent (nothing pinned)")
		}
		return false, nil
	}
	return false, err
}

// follower follows a control plane and programs what it serves.
type follower interface {
	Run(ctx context.Context) error
	Ready() bool
}

// xdsStatus is the control plane side of /status in envoy mode.
type xdsStatus struct {
	Mode      string `json:"mode"`
	NodeID    string `json:"node_id"`
	Delta     bool   `json:"delta"`
	LastError string `json:"last_error,omitempty"`
	// HeldEmpty: the control plane's first config had no service and was not applied, keeping
	// the services an earlier agent pinned (see xds.Client.Adopted).
	HeldEmpty bool `json:"held_empty_config,omitempty"`
	xds.Report
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
