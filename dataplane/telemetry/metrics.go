package telemetry

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onehop-mesh/onehop/dataplane/datapath"
)

// istioLabels are the labels of Istio's standard metrics, in Istio's order.
var istioLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_flags", "connection_security_policy",
}

// connLabels label the series of one long connection: its addresses beside who and what.
var connLabels = []string{"reporter", "source_address", "destination_address", "service_address",
	"source_workload", "source_workload_namespace", "destination_workload", "destination_workload_namespace", "destination_service"}

type metrics struct {
	opened, closed, sent, received, retrans, lost *prometheus.CounterVec
	failed                                        *prometheus.CounterVec
	srtt                                          *prometheus.HistogramVec
	events                                        *prometheus.CounterVec
	readErrors                                    prometheus.Counter
}

// children are one label set's series, looked up once per connection.
type children struct {
	opened, closed, sent, received, retrans, lost prometheus.Counter
	srtt                                          prometheus.Observer
}

func newMetrics(reg prometheus.Registerer, t *Telemetry) (*metrics, error) {
	counter := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &metrics{
		opened:   counter("istio_tcp_connections_opened_total", "TCP connections opened (Istio's standard metric), counted from the kernel's sockops.", istioLabels),
		closed:   counter("istio_tcp_connections_closed_total", "TCP connections closed (Istio's standard metric).", istioLabels),
		sent:     counter("istio_tcp_sent_bytes_total", "Payload bytes sent by the reporting side during TCP connections (Istio's standard metric; each byte once, however often retransmitted).", istioLabels),
		received: counter("istio_tcp_received_bytes_total", "Payload bytes received by the reporting side during TCP connections (Istio's standard metric).", istioLabels),
		retrans:  counter("onehop_tcp_retransmits_total", "TCP segments retransmitted by the reporting side (tcp_sock.total_retrans).", istioLabels),
		lost:     counter("onehop_tcp_lost_packets_total", "Packets the reporting side's TCP marked lost (tcp_sock.lost).", istioLabels),
		failed: counter("onehop_tcp_connections_failed_total",
			"TCP connects that never got established, by reason: no_endpoints (refused by onehop: the service has none), refused (RST), timeout, unreachable, reset, other.",
			append(append([]string{}, istioLabels...), "reason")),
		srtt: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "onehop_tcp_srtt_seconds",
			Help:    "Smoothed RTT of TCP connections, sampled at each periodic report and at close.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 16)}, istioLabels),
		events: counter("onehop_telemetry_events_total", "Connection events read from the kernel (oh_events), by type. Events the kernel could not send are onehop_kernel_events_lost_total.", []string{"type"}),
		readErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "onehop_telemetry_read_errors_total",
			Help: "Errors reading oh_events."}),
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	for _, c := range []prometheus.Collector{m.opened, m.closed, m.sent, m.received, m.retrans, m.lost, m.failed, m.srtt, m.events, m.readErrors, &longConns{t}} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register telemetry metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) children(l prometheus.Labels) *children {
	return &children{
		opened: m.opened.With(l), closed: m.closed.With(l), sent: m.sent.With(l), received: m.received.With(l),
		retrans: m.retrans.With(l), lost: m.lost.With(l), srtt: m.srtt.With(l),
	}
}

func withReason(l prometheus.Labels, reason string) prometheus.Labels {
	out := make(prometheus.Labels, len(l)+1)
	for k, v := range l {
		out[k] = v
	}
	out["reason"] = reason
	return out
}

// connValues are the values of connLabels, in their order.
type connValues [9]string

// longConns exports each connection older than Options.LongConnection as series of its own,
// from its latest event (a periodic report every period while it carries traffic); they go
// when it closes. Only long ones: labels per connection on every connection would be unbounded.
type longConns struct{ t *Telemetry }

var (
	connSent     = prometheus.NewDesc("onehop_tcp_connection_sent_bytes_total", "Payload bytes sent so far by one long-lived connection (as of its latest report).", connLabels, nil)
	connReceived = prometheus.NewDesc("onehop_tcp_connection_received_bytes_total", "Payload bytes received so far by one long-lived connection.", connLabels, nil)
	connRetrans  = prometheus.NewDesc("onehop_tcp_connection_retransmits_total", "Segments retransmitted so far by one long-lived connection.", connLabels, nil)
	connLost     = prometheus.NewDesc("onehop_tcp_connection_lost_packets_total", "Packets marked lost so far by one long-lived connection.", connLabels, nil)
	connSRTT     = prometheus.NewDesc("onehop_tcp_connection_srtt_seconds", "Smoothed RTT of one long-lived connection at its latest report.", connLabels, nil)
	connAge      = prometheus.NewDesc("onehop_tcp_connection_age_seconds", "How long one long-lived connection had been open at its latest report.", connLabels, nil)
)

func (l *longConns) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connSent, connReceived, connRetrans, connLost, connSRTT, connAge} {
		ch <- d
	}
}

func (l *longConns) Collect(ch chan<- prometheus.Metric) {
	l.t.mu.Lock()
	defer l.t.mu.Unlock()
	// Two connections with the same labels (one whose close event was lost, not pruned yet, and
	// a new one on the same addresses) would be one series twice, which fails the whole scrape:
	// the one reported last is exported.
	latest := map[connValues]*datapath.Event{}
	for _, c := range l.t.conns {
		e := &c.last
		if e.Age() < l.t.opts.LongConnection {
			continue
		}
		vals := connValues{c.labels["reporter"], addr(e.Src), addr(e.Dst), addr(e.VIP),
			c.labels["source_workload"], c.labels["source_workload_namespace"],
			c.labels["destination_workload"], c.labels["destination_workload_namespace"], c.labels["destination_service"]}
		if e.Direction == datapath.DirectionInbound { // the peer is the source
			vals[1], vals[2] = addr(e.Dst), addr(e.Src)
		}
		if prev, ok := latest[vals]; !ok || e.Time.After(prev.Time) {
			latest[vals] = e
		}
	}
	for key, e := range latest {
		vals := key[:]
		ch <- prometheus.MustNewConstMetric(connSent, prometheus.CounterValue, float64(e.Total.BytesSent), vals...)
		ch <- prometheus.MustNewConstMetric(connReceived, prometheus.CounterValue, float64(e.Total.BytesReceived), vals...)
		ch <- prometheus.MustNewConstMetric(connRetrans, prometheus.CounterValue, float64(e.Total.Retrans), vals...)
		ch <- prometheus.MustNewConstMetric(connLost, prometheus.CounterValue, float64(e.Total.Lost), vals...)
		ch <- prometheus.MustNewConstMetric(connSRTT, prometheus.GaugeValue, e.SRTT.Seconds(), vals...)
		ch <- prometheus.MustNewConstMetric(connAge, prometheus.GaugeValue, e.Age().Seconds(), vals...)
	}
}
