package datapath

import (
	"fmt"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the agent's datapath metrics. A nil *Metrics records nothing.
type Metrics struct {
	mapOps, mapErrors   *prometheus.CounterVec
	services, endpoints prometheus.Gauge
	kernel              *kernelCollector
}

// NewMetrics creates the datapath metrics and registers them with reg (if not nil). The kernel
// counters (onehop_kernel_<name>_total, names from enum oh_counter) are read from the Datapath
// loaded with these Metrics, at scrape time.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	names, err := kernelCounterNames()
	if err != nil {
		return nil, fmt.Errorf("datapath metrics: %w", err)
	}
	m := &Metrics{
		mapOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onehop_agent_map_operations_total",
			Help: "BPF map elements written (op=update) or deleted (op=delete) by the agent, by map.",
		}, []string{"map", "op"}),
		mapErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "onehop_agent_map_errors_total",
			Help: "Failed BPF map operations of the agent, by map and op.",
		}, []string{"map", "op"}),
		services: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "onehop_agent_programmed_services",
			Help: "Service frontends programmed in the kernel maps.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "onehop_agent_programmed_endpoints",
			Help: "Endpoints programmed in the kernel maps, counted once per service and priority level.",
		}),
		kernel: &kernelCollector{},
	}
	for _, n := range names {
		m.kernel.descs = append(m.kernel.descs, prometheus.NewDesc("onehop_kernel_"+n+"_total",
			"Kernel datapath counter "+n+" (enum oh_counter in bpf/onehop.h), summed over CPUs.", nil, nil))
	}
	m.kernel.names = names
	if reg != nil {
		for _, c := range []prometheus.Collector{m.mapOps, m.mapErrors, m.services, m.endpoints, m.kernel} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register datapath metrics: %w", err)
			}
		}
	}
	return m, nil
}

func (m *Metrics) mapOp(mapName, op string, n int, err error) {
	if m == nil {
		return
	}
	if n > 0 {
		m.mapOps.WithLabelValues(mapName, op).Add(float64(n))
	}
	if err != nil {
		m.mapErrors.WithLabelValues(mapName, op).Inc()
	}
}

func (m *Metrics) programmed(now Programmed) {
	if m == nil {
		return
	}
	m.services.Set(float64(now.Services))
	m.endpoints.Set(float64(now.Endpoints))
}

// kernelSource swaps the Datapath whose counters are exported from old to new.
func (m *Metrics) kernelSource(old, new *Datapath) {
	if m != nil {
		m.kernel.source.CompareAndSwap(old, new)
	}
}

type kernelCollector struct {
	names  []string
	descs  []*prometheus.Desc
	source atomic.Pointer[Datapath]
}

func (c *kernelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *kernelCollector) Collect(ch chan<- prometheus.Metric) {
	d := c.source.Load()
	if d == nil {
		return
	}
	vals, err := d.Counters()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.descs[0], err)
		return
	}
	for i, n := range c.names {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(vals[n]))
	}
}
