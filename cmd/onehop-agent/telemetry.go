package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/telemetry"
	"github.com/onehop-mesh/onehop/dataplane/workload"
)

// agentTelemetry reads the kernel's connection events into metrics and the access log.
type agentTelemetry struct {
	pods *telemetry.Pods

	mu        sync.Mutex
	accessLog map[uint64]bool // netns cookie -> its enrollment asked for the access log
	dp        *datapath.Datapath
	closeLog  func() error // writes out the buffered access log; nil without one
	start     func()       // begins reading events (see newTelemetry)
}

// close writes out what the access log buffered.
func (a *agentTelemetry) close() {
	if a.closeLog != nil {
		a.closeLog()
	}
}

// newTelemetry prepares reading oh_events (even with --telemetry off: pods may be enrolled with
// it, and an earlier agent's events wait in the pinned ring buffer); start begins it, once the
// previous agent's enrollments are restored: events read before would find no pod metadata.
func newTelemetry(ctx context.Context, cfg telemetryConfig, dp *datapath.Datapath, reg prometheus.Registerer,
	pods *telemetry.Pods, dir telemetry.Directory, log *slog.Logger) (*agentTelemetry, error) {
	a := &agentTelemetry{pods: pods, accessLog: map[uint64]bool{}, dp: dp}
	var accessLog *slog.Logger
	if cfg.accessLog != "" {
		var w io.Writer = os.Stdout
		if cfg.accessLog != "-" {
			f, err := os.OpenFile(cfg.accessLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return nil, fmt.Errorf("--access-log: %w", err)
			}
			w = f // closed with the process
		}
		lw := telemetry.NewLogWriter(w, time.Second)
		a.closeLog = lw.Close
		accessLog = slog.New(slog.NewJSONHandler(lw, nil))
	}
	t, err := telemetry.New(telemetry.Options{Registerer: reg, Pods: pods, Directory: dir, AccessLog: accessLog,
		AccessLogOn: a.accessLogOn, LongConnection: cfg.long})
	if err != nil {
		return nil, err
	}
	rd, err := dp.Events()
	if err != nil {
		return nil, err
	}
	a.start = func() {
		go func() {
			if err := t.Run(ctx, rd); err != nil {
				log.Error("telemetry stopped", "err", err)
			}
		}()
		go a.prune(ctx, t, log)
	}
	return a, nil
}

// enrolled follows /enroll: the pod's metadata labels its connections, its options say whether
// it is access logged.
func (a *agentTelemetry) enrolled(e agent.Enrollment, on bool) {
	var w telemetry.Workload
	if e.Pod != nil {
		w = *e.Pod
	}
	a.pods.Set(e.Cookie, w, e.PodIPs, on && e.Pod != nil)
	a.mu.Lock()
	delete(a.accessLog, e.Cookie)
	a.mu.Unlock()
}

func (a *agentTelemetry) accessLogOn(netns uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	on, ok := a.accessLog[netns]
	if !ok {
		// Not cached: the kernel's oh_enrolled holds the options (and outlives agents).
		o, _, err := a.dp.Enrollment.Options(netns)
		on = err == nil && o.AccessLog
		a.accessLog[netns] = on
	}
	return on
}

// prune drops, once a minute, connections whose close event was lost (oh_events was full).
func (a *agentTelemetry) prune(ctx context.Context, t *telemetry.Telemetry, log *slog.Logger) {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		conns, err := a.dp.Conns()
		if err != nil {
			continue
		}
		alive := make(map[uint64]bool, len(conns))
		for _, c := range conns {
			alive[c.Cookie] = true
		}
		if n := t.Prune(func(c uint64) bool { return alive[c] }); n > 0 {
			log.Info("telemetry: forgot connections whose close event was lost", "connections", n)
		}
	}
}

// workloadDirectory is what the ambient workload API says of addresses: every workload of the
// mesh with its canonical names (ztunnel reports app and version as these), and the services.
type workloadDirectory struct{ c *workload.Client }

func (d workloadDirectory) Workload(ip netip.Addr) (telemetry.Workload, bool) {
	id, ok := d.c.Identity(ip)
	if !ok {
		return telemetry.Workload{}, false
	}
	return telemetry.Workload{Name: id.WorkloadName, Namespace: id.Namespace, App: id.CanonicalName, Version: id.CanonicalRevision,
		CanonicalService: id.CanonicalName, CanonicalRevision: id.CanonicalRevision, Cluster: id.ClusterID}, true
}

func (d workloadDirectory) Service(vip netip.AddrPort) (telemetry.Service, bool) {
	s, ok := d.c.ServiceByVIP(vip.Addr())
	if !ok {
		return telemetry.Service{}, false
	}
	return telemetry.Service{Host: s.Hostname, Name: s.Name, Namespace: s.Namespace}, true
}

func (d workloadDirectory) ServiceOf(netip.AddrPort) (telemetry.Service, bool) {
	return telemetry.Service{}, false
}
