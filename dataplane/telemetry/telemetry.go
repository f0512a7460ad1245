package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onehop-mesh/onehop/dataplane/datapath"
)

// Options configure a Telemetry.
type Options struct {
	// Registerer gets the metrics (nil: a private registry, for tests).
	Registerer prometheus.Registerer
	// Pods are the local pods; Directory knows the rest (the control plane's view).
	Pods      *Pods
	Directory Directory
	// AccessLog, if not nil, gets a line per event of the namespaces enrolled with access_log.
	AccessLog *slog.Logger
	// AccessLogOn says whether a namespace's events are logged (its enrollment's access_log).
	AccessLogOn func(netns uint64) bool
	// LongConnection: connections at least this old get series of their own (default 30s).
	LongConnection time.Duration
}

// Telemetry consumes connection events: it keeps the Istio-standard TCP metrics, the
// per-connection series of long connections, and writes the access log.
type Telemetry struct {
	opts Options
	m    *metrics

	mu      sync.Mutex
	conns   map[uint64]*conn             // live connections seen, by socket cookie
	dialled map[[2]netip.AddrPort]uint64 // live outbound connections to a VIP, by {src, dst}
	labels  map[labelKey]labelEntry
}

// labelKey is what a connection's labels follow from: its pod, its side, and the peer and
// service. Connections alike share their resolved labels and series: looking a series up by 23
// labels costs more than everything else an event does.
type labelKey struct {
	netns uint64
	dir   datapath.Direction
	peer  netip.AddrPort // outbound: the endpoint; inbound: the peer's address (port 0)
	vip   netip.AddrPort // outbound
	local netip.AddrPort // inbound: the pod's own endpoint
}

type labelEntry struct {
	labels  prometheus.Labels
	c       *children
	expires time.Time
}

// labelTTL: resolved labels are resolved again after this long, so that a pod enrolled or a
// service changed meanwhile shows; labelCacheMax bounds the cache.
const (
	labelTTL      = 10 * time.Second
	labelCacheMax = 4096
)

// series returns the labels and series of e's connection, resolved at most once per labelTTL.
// Called with t.mu held.
func (t *Telemetry) series(e *datapath.Event) (prometheus.Labels, *children) {
	k := labelKey{netns: e.Netns, dir: e.Direction}
	if e.Direction == datapath.DirectionInbound {
		k.peer, k.local = netip.AddrPortFrom(e.Dst.Addr(), 0), e.Src
		// A client on this node: the VIP it dialled names the service (an endpoint may serve
		// several). Its open event comes first: it is sent before the handshake's last ACK.
		if cookie, ok := t.dialled[[2]netip.AddrPort{e.Dst, e.Src}]; ok {
			k.vip = t.conns[cookie].last.VIP
		}
	} else {
		k.peer, k.vip = e.Dst, e.VIP
	}
	now := time.Now()
	if le, ok := t.labels[k]; ok && now.Before(le.expires) {
		return le.labels, le.c
	}
	if len(t.labels) >= labelCacheMax {
		clear(t.labels)
	}
	labels := t.resolve(e, k.vip)
	le := labelEntry{labels: labels, c: t.m.children(labels), expires: now.Add(labelTTL)}
	t.labels[k] = le
	return le.labels, le.c
}

// conn is what Telemetry keeps of a live connection: its label children (resolved once) and
// its latest event (the counters of a long connection's own series).
type conn struct {
	labels prometheus.Labels
	c      *children
	last   datapath.Event
}

// New creates a Telemetry and registers its metrics.
func New(opts Options) (*Telemetry, error) {
	if opts.LongConnection <= 0 {
		opts.LongConnection = 30 * time.Second
	}
	if opts.Pods == nil {
		opts.Pods = &Pods{}
	}
	if opts.Directory == nil {
		opts.Directory = Directories{}
	}
	t := &Telemetry{opts: opts, conns: map[uint64]*conn{}, dialled: map[[2]netip.AddrPort]uint64{}, labels: map[labelKey]labelEntry{}}
	m, err := newMetrics(opts.Registerer, t)
	if err != nil {
		return nil, err
	}
	t.m = m
	return t, nil
}

// Run reads events from rd until ctx ends or rd is closed.
func (t *Telemetry) Run(ctx context.Context, rd *datapath.EventReader) error {
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	defer stop()
	for {
		ev, err := rd.Read()
		if errors.Is(err, datapath.ErrClosed) {
			return nil
		}
		if err != nil {
			t.m.readErrors.Inc()
			select { // not a spin: a ring buffer that keeps failing is read again a moment later
			case <-ctx.Done():
				return nil
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		t.Handle(&ev)
	}
}

// Handle accounts one event.
func (t *Telemetry) Handle(e *datapath.Event) {
	t.m.events.WithLabelValues(e.Type.String()).Inc()
	if e.Type == datapath.EventConnectFailed {
		labels := t.resolve(e, netip.AddrPort{})
		t.m.failed.With(withReason(labels, failReason(e))).Inc()
		t.log(e, labels)
		return
	}
	t.opts.Pods.learn(e.Netns, e.Src.Addr())
	t.mu.Lock()
	c := t.conns[e.Cookie]
	if c == nil {
		c = &conn{}
		c.labels, c.c = t.series(e)
		t.conns[e.Cookie] = c
		if e.Direction == datapath.DirectionOutbound && e.VIP.IsValid() {
			t.dialled[[2]netip.AddrPort{e.Src, e.Dst}] = e.Cookie
		}
	}
	c.last = *e
	if e.Type == datapath.EventClose {
		t.forget(e.Cookie)
	}
	t.mu.Unlock()

	ch := c.c
	if e.First {
		ch.opened.Inc()
	}
	ch.sent.Add(float64(e.Delta.BytesSent))
	ch.received.Add(float64(e.Delta.BytesReceived))
	ch.retrans.Add(float64(e.Delta.Retrans))
	ch.lost.Add(float64(e.Delta.Lost))
	if e.Type != datapath.EventOpen && e.SRTT > 0 {
		ch.srtt.Observe(e.SRTT.Seconds())
	}
	if e.Type == datapath.EventClose {
		ch.closed.Inc()
	}
	t.log(e, c.labels)
}

func failReason(e *datapath.Event) string {
	switch {
	case e.NoEndpoints:
		return "no_endpoints"
	case e.Err == syscall.ECONNREFUSED:
		return "refused"
	case e.Err == syscall.ETIMEDOUT:
		return "timeout"
	case e.Err == syscall.EHOSTUNREACH || e.Err == syscall.ENETUNREACH:
		return "unreachable"
	case e.Err == syscall.ECONNRESET:
		return "reset"
	}
	return "other"
}

// resolve labels an event's connection as Istio would: reporter "source" for the client side
// (an outbound socket of a local pod), "destination" for the server side, whose service is the
// one dialled if known (a client on this node), else one its endpoint serves.
func (t *Telemetry) resolve(e *datapath.Event, dialled netip.AddrPort) prometheus.Labels {
	local, _ := t.opts.Pods.Local(e.Netns)
	peer, _ := t.opts.Directory.Workload(e.Dst.Addr())
	var (
		svc     Service
		haveSvc bool
	)
	src, dst := local, peer
	reporter, policy := "source", "unknown"
	if e.Direction == datapath.DirectionInbound {
		src, dst = peer, local
		reporter, policy = "destination", "none" // plaintext: Istio says none without mTLS
		if dialled.IsValid() {
			svc, haveSvc = t.opts.Directory.Service(dialled)
		}
		if !haveSvc {
			svc, haveSvc = t.opts.Directory.ServiceOf(e.Src)
		}
	} else if e.VIP.IsValid() {
		svc, haveSvc = t.opts.Directory.Service(e.VIP)
	} else {
		svc, haveSvc = t.opts.Directory.ServiceOf(e.Dst)
	}
	if !haveSvc {
		svc = Service{}
		if e.Direction == datapath.DirectionOutbound && e.Dst.IsValid() {
			svc.Host = e.Dst.Addr().String() // as Istio names a destination it knows no service of
		}
	}
	flags := "-"
	if e.Type == datapath.EventConnectFailed {
		flags = "UF" // upstream connection failure
		if e.NoEndpoints {
			flags = "UH" // no healthy upstream
		}
	}
	return prometheus.Labels{
		"reporter":                       reporter,
		"source_workload":                or(src.Name),
		"source_workload_namespace":      or(src.Namespace),
		"source_principal":               "unknown", // a principal is what mTLS proves; onehop carries plaintext
		"source_app":                     or(src.App),
		"source_version":                 or(src.Version),
		"source_canonical_service":       or(src.CanonicalService),
		"source_canonical_revision":      or(src.CanonicalRevision),
		"source_cluster":                 or(src.Cluster),
		"destination_workload":           or(dst.Name),
		"destination_workload_namespace": or(dst.Namespace),
		"destination_principal":          "unknown",
		"destination_app":                or(dst.App),
		"destination_version":            or(dst.Version),
		"destination_canonical_service":  or(dst.CanonicalService),
		"destination_canonical_revision": or(dst.CanonicalRevision),
		"destination_cluster":            or(dst.Cluster),
		"destination_service":            or(svc.Host),
		"destination_service_name":       or(svc.Name),
		"destination_service_namespace":  or(svc.Namespace),
		"request_protocol":               "tcp",
		"response_flags":                 flags,
		"connection_security_policy":     policy,
	}
}

func or(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// log writes the access log line of an event, if its namespace asked for one.
func (t *Telemetry) log(e *datapath.Event, labels prometheus.Labels) {
	if t.opts.AccessLog == nil || (t.opts.AccessLogOn != nil && !t.opts.AccessLogOn(e.Netns)) {
		return
	}
	attrs := []slog.Attr{
		slog.String("event", e.Type.String()),
		slog.String("direction", e.Direction.String()),
		slog.String("reporter", labels["reporter"]),
		slog.String("src", addr(e.Src)),
		slog.String("dst", addr(e.Dst)),
		slog.String("service_address", addr(e.VIP)),
		slog.String("service", labels["destination_service"]),
		slog.String("src_workload", labels["source_workload"]),
		slog.String("src_namespace", labels["source_workload_namespace"]),
		slog.String("dst_workload", labels["destination_workload"]),
		slog.String("dst_namespace", labels["destination_workload_namespace"]),
		slog.String("state", e.State.String()),
	}
	if e.Type == datapath.EventConnectFailed {
		attrs = append(attrs, slog.String("error", e.Err.Error()), slog.String("reason", failReason(e)))
	} else {
		attrs = append(attrs,
			slog.Time("start_time", e.Established),
			slog.Float64("duration_ms", ms(e.Age())),
			slog.Uint64("bytes_sent", e.Total.BytesSent),
			slog.Uint64("bytes_received", e.Total.BytesReceived),
			slog.Uint64("retransmits", uint64(e.Total.Retrans)),
			slog.Uint64("lost", uint64(e.Total.Lost)),
			slog.Float64("srtt_ms", ms(e.SRTT)),
			slog.Float64("min_rtt_ms", ms(e.MinRTT)),
			slog.Uint64("cookie", e.Cookie))
	}
	// The line's time is the event's (when the kernel saw it), not when it was read.
	rec := slog.NewRecord(e.Time, slog.LevelInfo, "connection", 0)
	rec.AddAttrs(attrs...)
	t.opts.AccessLog.Handler().Handle(context.Background(), rec)
}

func addr(a netip.AddrPort) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// forget drops a connection. Called with t.mu held.
func (t *Telemetry) forget(cookie uint64) {
	if c, ok := t.conns[cookie]; ok {
		k := [2]netip.AddrPort{c.last.Src, c.last.Dst}
		if t.dialled[k] == cookie {
			delete(t.dialled, k)
		}
		delete(t.conns, cookie)
	}
}

// Live is how many live connections Telemetry keeps.
func (t *Telemetry) Live() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// Prune forgets the connections the kernel no longer tracks (alive says which it does) whose
// close event was lost, so that a full ring buffer cannot make Telemetry grow for ever.
func (t *Telemetry) Prune(alive func(cookie uint64) bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for cookie := range t.conns {
		if !alive(cookie) {
			t.forget(cookie)
			n++
		}
	}
	return n
}
