package workload

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the workload API client's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	updates    *prometheus.CounterVec
	rejected   prometheus.Counter
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	resources  *prometheus.GaugeVec
	frontends  *prometheus.GaugeVec
	issues     prometheus.Gauge
	programmed prometheus.Histogram
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onehop_workload_updates_total",
			Help: "Workload API (Delta ADS, istio.workload.Address) responses processed, by result (ack, nack).",
		}, []string{"result"}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "onehop_workload_rejected_resources_total",
			Help: "Address resources rejected (undecodable or malformed) and NACKed; the rest of their response was applied.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "onehop_workload_connected",
			Help: "1 while the workload API stream to the control plane is open.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "onehop_workload_reconnects_total",
			Help: "Workload API streams opened after the first one.",
		}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "onehop_workload_resources",
			Help: "Address resources held, by kind (service, workload).",
		}, []string{"kind"}),
		frontends: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "onehop_workload_frontends",
			Help: "Service frontends (VIP, port) in the translated config, by kind: endpoints (balanced over workloads), waypoint (steered to the service's waypoint), empty (no endpoints: connections are refused).",
		}, []string{"kind"}),
		issues: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "onehop_workload_issues",
			Help: "Problems that left services, frontends or endpoints out of the translated config.",
		}),
		programmed: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "onehop_workload_receipt_to_programmed_seconds",
			Help:    "From a workload API response's arrival to its config programmed (Apply returned), or to its ACK when the config did not change.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 17),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.updates, m.rejected, m.connected, m.reconnects, m.resources, m.frontends, m.issues, m.programmed)
	}
	return m
}

func (m *Metrics) update(ack bool, rejected int) {
	if m == nil {
		return
	}
	if ack {
		m.updates.WithLabelValues("ack").Inc()
	} else {
		m.updates.WithLabelValues("nack").Inc()
	}
	m.rejected.Add(float64(rejected))
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

func (m *Metrics) translated(s Summary) {
	if m == nil {
		return
	}
	m.resources.WithLabelValues("service").Set(float64(s.Services))
	m.resources.WithLabelValues("workload").Set(float64(s.Workloads))
	m.frontends.WithLabelValues("endpoints").Set(float64(s.Frontends - s.Empty - s.Steered))
	m.frontends.WithLabelValues("waypoint").Set(float64(s.Steered))
	m.frontends.WithLabelValues("empty").Set(float64(s.Empty))
	m.issues.Set(float64(s.Issues))
}

func (m *Metrics) receiptToProgrammed(d time.Duration) {
	if m != nil {
		m.programmed.Observe(d.Seconds())
	}
}
