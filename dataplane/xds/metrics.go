package xds

import (
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the xDS client's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	updates    *prometheus.CounterVec
	nacks      *prometheus.CounterVec
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	programmed *prometheus.HistogramVec
	issues     *prometheus.GaugeVec
	issueCount *prometheus.GaugeVec
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onehop_agent_xds_updates_total",
			Help: "xDS responses processed, by resource type (lds, rds, cds, eds) and result (ack, nack).",
		}, []string{"type", "result"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onehop_agent_xds_nacks_total",
			Help: "xDS responses rejected, by resource type.",
		}, []string{"type"}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "onehop_agent_xds_connected",
			Help: "1 while the ADS stream to the control plane is open.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "onehop_agent_xds_reconnects_total",
			Help: "ADS streams opened after the first one.",
		}),
		programmed: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "onehop_agent_xds_receipt_to_programmed_seconds",
			Help: "From an accepted xDS response's arrival to its config programmed (Apply returned), or to its ACK when the config did not change, by resource type.",
			// 50µs to ~3.3s: an endpoint change is well under 10ms, a full push of 10k services about 1s.
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 17),
		}, []string{"type"}),
		issues: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "onehop_agent_xds_service_issue",
			Help: "1 for each service the last config could not program as asked: issue=rejected (not programmed), kept_previous (rejected, its previous version still programmed) or needs_waypoint (balanced by its catch-all route; its L7 routes need a waypoint). /status gives the reasons.",
		}, []string{"service", "issue"}),
		issueCount: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "onehop_agent_xds_services_with_issue",
			Help: "Services (or whole resources) of the last config by issue (rejected, kept_previous, needs_waypoint).",
		}, []string{"issue"}),
	}
	for _, kind := range issueKinds {
		m.issueCount.WithLabelValues(kind).Set(0)
	}
	if reg != nil {
		reg.MustRegister(m.updates, m.nacks, m.connected, m.reconnects, m.programmed, m.issues, m.issueCount)
	}
	return m
}

// issueKinds are the values of the issue label.
var issueKinds = []string{"rejected", "kept_previous", "needs_waypoint"}

func (m *Metrics) setReport(r Report) {
	if m == nil {
		return
	}
	m.issues.Reset()
	counts := map[string]float64{}
	for _, kind := range issueKinds {
		counts[kind] = 0
	}
	for _, is := range r.Rejected {
		kind := "rejected"
		if is.Kept {
			kind = "kept_previous"
		}
		counts[kind]++
		if is.Service != "" {
			m.issues.WithLabelValues(is.Service, kind).Set(1)
		}
	}
	for _, is := range r.NeedsWaypoint {
		counts["needs_waypoint"]++
		m.issues.WithLabelValues(is.Service, "needs_waypoint").Set(1)
	}
	for k, n := range counts {
		m.issueCount.WithLabelValues(k).Set(n)
	}
}

func (m *Metrics) update(typeURL string, ack bool) {
	if m == nil {
		return
	}
	t := typeLabel(typeURL)
	if ack {
		m.updates.WithLabelValues(t, "ack").Inc()
		return
	}
	m.updates.WithLabelValues(t, "nack").Inc()
	m.nacks.WithLabelValues(t).Inc()
}

func (m *Metrics) receiptToProgrammed(typeURL string, d time.Duration) {
	if m != nil {
		m.programmed.WithLabelValues(typeLabel(typeURL)).Observe(d.Seconds())
	}
}

func (m *Metrics) setConnected(up bool) {
	if m == nil {
		return
	}
	if up {
		m.connected.Set(1)
	} else {
		m.connected.Set(0)
	}
}

func (m *Metrics) reconnect() {
	if m != nil {
		m.reconnects.Inc()
	}
}

func typeLabel(typeURL string) string {
	switch typeURL {
	case resourcev3.ListenerType:
		return "lds"
	case resourcev3.RouteType:
		return "rds"
	case resourcev3.ClusterType:
		return "cds"
	case resourcev3.EndpointType:
		return "eds"
	}
	return "other"
}
