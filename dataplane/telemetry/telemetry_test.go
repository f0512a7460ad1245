package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

// These tests feed Telemetry the decoded events the kernel would send (datapath.Event; that the
// kernel sends them is events_test.go's job in dataplane/datapath) and read what it exports
// from its registry.

// The world of the tests: a client pod (netns clientNetns) connects through a service VIP to a
// server pod. The server is local too (netns serverNetns) or, for the client's metrics, known
// only to the remote directory.
const (
	clientNetns = 1
	serverNetns = 2
	otherNetns  = 3 // not enrolled
)

var (
	t0       = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clientAP = netip.MustParseAddrPort("10.244.1.5:40000")
	serverAP = netip.MustParseAddrPort("10.244.2.7:8080")
	vipAP    = netip.MustParseAddrPort("10.96.0.10:80")

	clientPod = Workload{Name: "sleep", Namespace: "ns-a", App: "sleep", Version: "v1",
		CanonicalService: "sleep-canon", CanonicalRevision: "r1", Cluster: "c1"}
	serverPod = Workload{Name: "web", Namespace: "ns", App: "web", Version: "v2",
		CanonicalService: "web-canon", CanonicalRevision: "r2", Cluster: "c2"}
	webService = Service{Host: "web.ns.svc.cluster.local", Name: "web", Namespace: "ns"}
)

// mapDirectory is a Directory from maps: the control plane's view of remote workloads.
type mapDirectory struct {
	workloads map[netip.Addr]Workload
	services  map[netip.AddrPort]Service
}

func (d mapDirectory) Workload(ip netip.Addr) (Workload, bool) {
	w, ok := d.workloads[ip]
	return w, ok
}

func (d mapDirectory) Service(vip netip.AddrPort) (Service, bool) {
	s, ok := d.services[vip]
	return s, ok
}

func (d mapDirectory) ServiceOf(netip.AddrPort) (Service, bool) { return Service{}, false }

// webConfig programs the VIP with the server as its endpoint, named as an Istio cluster.
func webConfig() *model.Config {
	return &model.Config{Services: map[model.Key]model.Service{
		key(vipAP): {Key: key(vipAP), Name: "outbound|80||web.ns.svc.cluster.local",
			Priorities: [][]model.Endpoint{{{Addr: serverAP, Weight: 1}}}},
	}}
}

func key(ap netip.AddrPort) model.Key {
	return model.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: model.TCP}
}

// fixture is a Telemetry with its registry: the client pod is enrolled, the server is known to
// the remote directory only (as on another node), the VIP is programmed.
type fixture struct {
	reg  *prometheus.Registry
	tel  *Telemetry
	pods *Pods
	prog *Programmed
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := &fixture{reg: prometheus.NewRegistry(), pods: &Pods{}, prog: &Programmed{}}
	f.pods.Set(clientNetns, clientPod, []netip.Addr{clientAP.Addr()}, true)
	f.prog.Set(webConfig())
	remote := mapDirectory{workloads: map[netip.Addr]Workload{serverAP.Addr(): serverPod}}
	opts.Registerer, opts.Pods = f.reg, f.pods
	opts.Directory = Directories{f.pods, f.prog, remote}
	tel, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	f.tel = tel
	return f
}

// outbound is an event of the client's connection cookie through the VIP, age after it was
// established.
func outbound(typ datapath.EventType, cookie uint64, age time.Duration) datapath.Event {
	return datapath.Event{Type: typ, Direction: datapath.DirectionOutbound, Cookie: cookie, Netns: clientNetns,
		State: datapath.TCPEstablished, Time: t0.Add(age), Established: t0, Src: clientAP, Dst: serverAP, VIP: vipAP}
}

// inbound is an event of the server's side of a connection from the client.
func inbound(typ datapath.EventType, cookie uint64, age time.Duration) datapath.Event {
	return datapath.Event{Type: typ, Direction: datapath.DirectionInbound, Cookie: cookie, Netns: serverNetns,
		State: datapath.TCPEstablished, Time: t0.Add(age), Established: t0, Src: serverAP, Dst: clientAP}
}

func failed(cookie uint64, err syscall.Errno, noEndpoints bool) datapath.Event {
	e := datapath.Event{Type: datapath.EventConnectFailed, Direction: datapath.DirectionOutbound, Cookie: cookie,
		Netns: clientNetns, State: datapath.TCPClose, Time: t0, Err: err, NoEndpoints: noEndpoints, VIP: vipAP}
	if !noEndpoints { // onehop picked an endpoint; the kernel's connect to it failed
		e.Src, e.Dst = clientAP, serverAP
	}
	return e
}

func stats(sent, received uint64, retrans, lost uint32) datapath.TCPStats {
	return datapath.TCPStats{BytesSent: sent, BytesReceived: received, Retrans: retrans, Lost: lost}
}

// series is one gathered sample: a counter's or gauge's value, a histogram's count and sum.
type series struct {
	name   string
	labels map[string]string
	value  float64
	sum    float64
}

func (s series) String() string {
	keys := make([]string, 0, len(s.labels))
	for k := range s.labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%q,", k, s.labels[k])
	}
	return fmt.Sprintf("%s{%s} %v", s.name, strings.TrimSuffix(b.String(), ","), s.value)
}

// gather reads every series of reg; a registry that cannot be gathered (what a scrape would
// get as an error) fails t.
func gather(t *testing.T, reg *prometheus.Registry) []series {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var out []series
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			s := series{name: mf.GetName(), labels: map[string]string{}}
			for _, l := range m.GetLabel() {
				s.labels[l.GetName()] = l.GetValue()
			}
			switch {
			case m.Counter != nil:
				s.value = m.GetCounter().GetValue()
			case m.Gauge != nil:
				s.value = m.GetGauge().GetValue()
			case m.Histogram != nil:
				s.value, s.sum = float64(m.GetHistogram().GetSampleCount()), m.GetHistogram().GetSampleSum()
			}
			out = append(out, s)
		}
	}
	return out
}

// find returns the series named name whose labels include match.
func find(all []series, name string, match map[string]string) []series {
	var out []series
	for _, s := range all {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range match {
			if s.labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// one returns the single series named name whose labels include match.
func one(t *testing.T, all []series, name string, match map[string]string) series {
	t.Helper()
	got := find(all, name, match)
	if len(got) != 1 {
		t.Fatalf("%s with %v: %d series, want 1:\n%s", name, match, len(got), dump(find(all, name, nil)))
	}
	return got[0]
}

func dump(ss []series) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	return b.String()
}

func TestServiceFromName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want Service
	}{
		{"outbound|80||web.ns.svc.cluster.local", webService},
		{"outbound|80|v1|web.ns.svc.cluster.local", webService},
		{"ns/web.ns.svc.cluster.local", webService},
		{"web.ns.svc.cluster.local", webService},
		{"web", Service{Host: "web", Name: "web"}},
		{"svc-10.96.200.1:80", Service{Host: "svc-10.96.200.1:80", Name: "svc-10.96.200.1:80"}},
	} {
		if got := ServiceFromName(tc.name); got != tc.want {
			t.Errorf("ServiceFromName(%q) = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestProgrammedServiceByVIPAndEndpoint(t *testing.T) {
	var p Programmed
	if _, ok := p.Service(vipAP); ok {
		t.Error("Service before any Set: found")
	}
	if _, ok := p.ServiceOf(serverAP); ok {
		t.Error("ServiceOf before any Set: found")
	}
	shared := netip.MustParseAddrPort("10.244.2.8:8080")
	api := netip.MustParseAddrPort("10.96.0.11:80")
	cfg := webConfig()
	web := cfg.Services[key(vipAP)]
	web.Priorities = [][]model.Endpoint{{{Addr: serverAP, Weight: 1}}, {{Addr: shared, Weight: 1}}}
	cfg.Services[key(vipAP)] = web
	cfg.Services[key(api)] = model.Service{Key: key(api), Name: "outbound|80||api.ns.svc.cluster.local",
		Priorities: [][]model.Endpoint{{{Addr: shared, Weight: 1}}}}
	p.Set(cfg)

	apiService := Service{Host: "api.ns.svc.cluster.local", Name: "api", Namespace: "ns"}
	for _, tc := range []struct {
		what   string
		lookup func(netip.AddrPort) (Service, bool)
		ap     netip.AddrPort
		want   Service
		ok     bool
	}{
		{"Service", p.Service, vipAP, webService, true},
		{"Service", p.Service, api, apiService, true},
		{"Service", p.Service, netip.MustParseAddrPort("10.96.0.10:81"), Service{}, false}, // another port
		{"Service", p.Service, serverAP, Service{}, false},                                 // an endpoint is no VIP
		{"ServiceOf", p.ServiceOf, serverAP, webService, true},                             // priority 0
		{"ServiceOf", p.ServiceOf, shared, apiService, true},                               // of two: the smaller name
		{"ServiceOf", p.ServiceOf, netip.MustParseAddrPort("10.244.2.7:9090"), Service{}, false},
		{"ServiceOf", p.ServiceOf, vipAP, Service{}, false},
	} {
		if got, ok := tc.lookup(tc.ap); got != tc.want || ok != tc.ok {
			t.Errorf("%s(%s) = %+v, %v; want %+v, %v", tc.what, tc.ap, got, ok, tc.want, tc.ok)
		}
	}

	// A new config: the endpoint index follows it (the server moved to another service).
	moved := &model.Config{Services: map[model.Key]model.Service{
		key(api): {Key: key(api), Name: "outbound|80||api.ns.svc.cluster.local", Priorities: [][]model.Endpoint{{{Addr: serverAP, Weight: 1}}}},
	}}
	p.Set(moved)
	if got, ok := p.ServiceOf(serverAP); !ok || got != apiService {
		t.Errorf("after Set: ServiceOf(%s) = %+v, %v; want %+v", serverAP, got, ok, apiService)
	}
	if _, ok := p.ServiceOf(shared); ok {
		t.Errorf("after Set: ServiceOf(%s) still found", shared)
	}
	if _, ok := p.Service(vipAP); ok {
		t.Errorf("after Set: Service(%s) still found", vipAP)
	}
}

func TestPods(t *testing.T) {
	var p Pods
	a1, a2 := netip.MustParseAddr("10.244.1.5"), netip.MustParseAddr("10.244.1.6")
	p.Set(clientNetns, clientPod, []netip.Addr{a1, netip.MustParseAddr("::ffff:10.244.1.6")}, true)
	p.Set(serverNetns, serverPod, []netip.Addr{serverAP.Addr()}, true)
	for _, ip := range []netip.Addr{a1, a2} { // a v4-mapped address is known by its IPv4 form
		if w, ok := p.Workload(ip); !ok || w != clientPod {
			t.Errorf("Workload(%s) = %+v, %v; want the client pod", ip, w, ok)
		}
	}
	if w, ok := p.Local(clientNetns); !ok || w != clientPod {
		t.Errorf("Local(client netns) = %+v, %v", w, ok)
	}
	if _, ok := p.Local(otherNetns); ok {
		t.Error("Local of a netns never set: found")
	}

	// Addresses are learnt from connections of enrolled namespaces only.
	learnt, stray := netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("10.244.9.9")
	p.learn(clientNetns, learnt)
	p.learn(otherNetns, stray)
	p.learn(clientNetns, netip.MustParseAddr("127.0.0.1"))
	p.learn(clientNetns, netip.Addr{})
	if w, ok := p.Workload(learnt); !ok || w != clientPod {
		t.Errorf("Workload(%s) after learning it from the client netns = %+v, %v", learnt, w, ok)
	}
	for _, ip := range []netip.Addr{stray, netip.MustParseAddr("127.0.0.1")} {
		if w, ok := p.Workload(ip); ok {
			t.Errorf("Workload(%s) = %+v: learnt from a netns not enrolled, or loopback", ip, w)
		}
	}

	// Forgetting a pod forgets its addresses, given and learnt; the other pod stays.
	p.Set(clientNetns, Workload{}, nil, false)
	for _, ip := range []netip.Addr{a1, a2, learnt} {
		if w, ok := p.Workload(ip); ok {
			t.Errorf("Workload(%s) after forgetting its pod = %+v", ip, w)
		}
	}
	if _, ok := p.Local(clientNetns); ok {
		t.Error("Local(client netns) after forgetting it: found")
	}
	p.learn(clientNetns, a1)
	if _, ok := p.Workload(a1); ok {
		t.Errorf("Workload(%s): learnt from a forgotten netns", a1)
	}
	if w, ok := p.Workload(serverAP.Addr()); !ok || w != serverPod {
		t.Errorf("Workload(server) = %+v, %v after forgetting another pod", w, ok)
	}
}

// Handle learns a pod's addresses from its connections' local side, for enrolled pods only.
func TestHandleLearnsLocalAddresses(t *testing.T) {
	f := newFixture(t, Options{})
	other := netip.MustParseAddrPort("10.244.1.99:41000")
	e := outbound(datapath.EventOpen, 1, 0)
	e.Src = other
	f.tel.Handle(&e)
	if w, ok := f.pods.Workload(other.Addr()); !ok || w != clientPod {
		t.Errorf("Workload(%s) after a connection from it = %+v, %v", other.Addr(), w, ok)
	}
	stray := netip.MustParseAddrPort("10.244.9.9:41000")
	e = outbound(datapath.EventOpen, 2, 0)
	e.Netns, e.Src = otherNetns, stray
	f.tel.Handle(&e)
	if w, ok := f.pods.Workload(stray.Addr()); ok {
		t.Errorf("Workload(%s) = %+v: learnt from a netns not enrolled", stray.Addr(), w)
	}
}

// wantLabels are the Istio labels of a connection from the client pod to the web service.
func wantLabels(reporter, policy string) map[string]string {
	return map[string]string{
		"reporter":                       reporter,
		"source_workload":                "sleep",
		"source_workload_namespace":      "ns-a",
		"source_principal":               "unknown",
		"source_app":                     "sleep",
		"source_version":                 "v1",
		"source_canonical_service":       "sleep-canon",
		"source_canonical_revision":      "r1",
		"source_cluster":                 "c1",
		"destination_workload":           "web",
		"destination_workload_namespace": "ns",
		"destination_principal":          "unknown",
		"destination_app":                "web",
		"destination_version":            "v2",
		"destination_canonical_service":  "web-canon",
		"destination_canonical_revision": "r2",
		"destination_cluster":            "c2",
		"destination_service":            "web.ns.svc.cluster.local",
		"destination_service_name":       "web",
		"destination_service_namespace":  "ns",
		"request_protocol":               "tcp",
		"response_flags":                 "-",
		"connection_security_policy":     policy,
	}
}

// checkConnection checks the Istio metrics of the one connection labelled by labels.
func checkConnection(t *testing.T, all []series, labels map[string]string, opened, closed, sent, received, retrans, lost float64, srttCount uint64, srttSum float64) {
	t.Helper()
	for _, c := range []struct {
		name string
		want float64
	}{
		{"istio_tcp_connections_opened_total", opened},
		{"istio_tcp_connections_closed_total", closed},
		{"istio_tcp_sent_bytes_total", sent},
		{"istio_tcp_received_bytes_total", received},
		{"onehop_tcp_retransmits_total", retrans},
		{"onehop_tcp_lost_packets_total", lost},
	} {
		s := one(t, all, c.name, map[string]string{"reporter": labels["reporter"]})
		if !maps.Equal(s.labels, labels) {
			t.Errorf("%s labels:\n got %s\nwant %s", c.name, s, series{name: c.name, labels: labels, value: c.want})
		}
		if s.value != c.want {
			t.Errorf("%s = %v, want %v", c.name, s.value, c.want)
		}
	}
	h := one(t, all, "onehop_tcp_srtt_seconds", map[string]string{"reporter": labels["reporter"]})
	if h.value != float64(srttCount) || fmt.Sprintf("%.9f", h.sum) != fmt.Sprintf("%.9f", srttSum) {
		t.Errorf("onehop_tcp_srtt_seconds: %v samples summing to %v, want %d summing to %v", h.value, h.sum, srttCount, srttSum)
	}
}

// An outbound connection (open, report, close) is counted opened and closed once, its bytes
// are the sum of its deltas, and it is labelled as Istio labels a client's report: the local pod
// is the source, the directory names the destination workload, the VIP names the service.
func TestHandleOutboundConnection(t *testing.T) {
	f := newFixture(t, Options{})
	open := outbound(datapath.EventOpen, 7, 0)
	open.First = true
	report := outbound(datapath.EventReport, 7, 5*time.Second)
	report.Total, report.Delta = stats(100, 200, 1, 0), stats(100, 200, 1, 0)
	report.SRTT = 250 * time.Microsecond
	closing := outbound(datapath.EventClose, 7, 6*time.Second)
	closing.State = datapath.TCPClose
	closing.Total, closing.Delta = stats(150, 225, 3, 1), stats(50, 25, 2, 1)
	closing.SRTT = 300 * time.Microsecond
	for _, e := range []datapath.Event{open, report, closing} {
		f.tel.Handle(&e)
		if e.Type != datapath.EventClose && f.tel.Live() != 1 {
			t.Errorf("after %s: %d live connections, want 1", e.Type, f.tel.Live())
		}
	}
	if n := f.tel.Live(); n != 0 {
		t.Errorf("after close: %d live connections, want 0", n)
	}
	all := gather(t, f.reg)
	checkConnection(t, all, wantLabels("source", "unknown"), 1, 1, 150, 225, 3, 1, 2, 550e-6)
	for typ, want := range map[string]float64{"open": 1, "report": 1, "close": 1} {
		if s := one(t, all, "onehop_telemetry_events_total", map[string]string{"type": typ}); s.value != want {
			t.Errorf("events of type %s: %v, want %v", typ, s.value, want)
		}
	}
	if s := find(all, "onehop_tcp_connections_failed_total", nil); len(s) != 0 {
		t.Errorf("failed connects counted:\n%s", dump(s))
	}
}

// The server's side (an inbound socket of a local pod) is the destination's report: the peer
// (a local pod known by its address) is the source, the service is the one the local address
// is an endpoint of, and the policy is "none" (plaintext).
func TestHandleInboundConnection(t *testing.T) {
	f := newFixture(t, Options{})
	f.pods.Set(serverNetns, serverPod, []netip.Addr{serverAP.Addr()}, true)
	open := inbound(datapath.EventOpen, 8, 0)
	open.First = true
	closing := inbound(datapath.EventClose, 8, time.Second)
	closing.Total, closing.Delta = stats(225, 150, 0, 0), stats(225, 150, 0, 0)
	closing.SRTT = 100 * time.Microsecond
	f.tel.Handle(&open)
	f.tel.Handle(&closing)
	checkConnection(t, gather(t, f.reg), wantLabels("destination", "none"), 1, 1, 225, 150, 0, 0, 1, 100e-6)
}

// A connection whose first event this agent reads is a report that is not First (its open was
// read by the agent before a restart) is not counted opened again; its close is counted.
func TestHandleConnectionOpenedBeforeRestart(t *testing.T) {
	f := newFixture(t, Options{})
	report := outbound(datapath.EventReport, 9, 10*time.Second)
	report.Total, report.Delta = stats(1000, 2000, 0, 0), stats(400, 500, 0, 0)
	closing := outbound(datapath.EventClose, 9, 11*time.Second)
	closing.Total, closing.Delta = stats(1010, 2020, 0, 0), stats(10, 20, 0, 0)
	f.tel.Handle(&report)
	f.tel.Handle(&closing)
	checkConnection(t, gather(t, f.reg), wantLabels("source", "unknown"), 0, 1, 410, 520, 0, 0, 0, 0)
}

// Failed connects are counted by reason, with Istio's response flags: UH when onehop refused
// (the service has no endpoints), UF when the endpoint did not answer.
func TestHandleConnectFailed(t *testing.T) {
	f := newFixture(t, Options{})
	cases := []struct {
		err         syscall.Errno
		noEndpoints bool
		reason      string
		flags       string
		n           int
	}{
		{syscall.ECONNREFUSED, true, "no_endpoints", "UH", 2},
		{syscall.ECONNREFUSED, false, "refused", "UF", 1},
		{syscall.ETIMEDOUT, false, "timeout", "UF", 3},
		{syscall.EHOSTUNREACH, false, "unreachable", "UF", 1},
		{syscall.ENETUNREACH, false, "unreachable", "UF", 1},
		{syscall.ECONNRESET, false, "reset", "UF", 1},
		{syscall.EACCES, false, "other", "UF", 1},
	}
	cookie := uint64(100)
	for _, c := range cases {
		for range c.n {
			cookie++
			e := failed(cookie, c.err, c.noEndpoints)
			f.tel.Handle(&e)
		}
	}
	all := gather(t, f.reg)
	want := map[string]float64{} // by reason
	for _, c := range cases {
		want[c.reason] += float64(c.n)
	}
	for _, c := range cases {
		s := one(t, all, "onehop_tcp_connections_failed_total", map[string]string{"reason": c.reason})
		if s.value != want[c.reason] || s.labels["response_flags"] != c.flags {
			t.Errorf("%v (no endpoints %v): %s; want %v with response_flags %s", c.err, c.noEndpoints, s, want[c.reason], c.flags)
		}
		l := s.labels
		if l["reporter"] != "source" || l["source_workload"] != "sleep" || l["destination_service"] != "web.ns.svc.cluster.local" ||
			l["destination_service_name"] != "web" || l["request_protocol"] != "tcp" {
			t.Errorf("%v: labels %s", c.err, s)
		}
		wantDst := "web"
		if c.noEndpoints { // no endpoint was picked: no peer
			wantDst = "unknown"
		}
		if l["destination_workload"] != wantDst {
			t.Errorf("%v (no endpoints %v): destination_workload %q, want %q", c.err, c.noEndpoints, l["destination_workload"], wantDst)
		}
	}
	if s := one(t, all, "onehop_telemetry_events_total", map[string]string{"type": "connect_failed"}); s.value != 10 {
		t.Errorf("connect_failed events: %v, want 10", s.value)
	}
	for _, name := range []string{"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
		if s := find(all, name, nil); len(s) != 0 {
			t.Errorf("failed connects counted in %s:\n%s", name, dump(s))
		}
	}
	if n := f.tel.Live(); n != 0 {
		t.Errorf("%d live connections after failed connects only", n)
	}
}

// connSeries are the series of long connections, by reporter.
func connSeries(all []series, name string) map[string]series {
	out := map[string]series{}
	for _, s := range find(all, name, nil) {
		out[s.labels["reporter"]] = s
	}
	return out
}

// A connection at least LongConnection old gets series of its own, with its addresses (the
// peer is the source of an inbound one), from its latest event; they go when it closes.
func TestLongConnections(t *testing.T) {
	f := newFixture(t, Options{LongConnection: 30 * time.Second})
	f.pods.Set(serverNetns, serverPod, []netip.Addr{serverAP.Addr()}, true)
	out, in := outbound(datapath.EventOpen, 1, 0), inbound(datapath.EventOpen, 2, 0)
	out.First, in.First = true, true
	young := outbound(datapath.EventOpen, 3, 0) // stays short
	young.Src = netip.MustParseAddrPort("10.244.1.5:40001")
	for _, e := range []*datapath.Event{&out, &in, &young} {
		f.tel.Handle(e)
	}
	if s := find(gather(t, f.reg), "onehop_tcp_connection_sent_bytes_total", nil); len(s) != 0 {
		t.Fatalf("new connections have series of their own:\n%s", dump(s))
	}
	report := func(e datapath.Event, age time.Duration, total datapath.TCPStats, srtt time.Duration) {
		e.Type, e.First, e.Time = datapath.EventReport, false, t0.Add(age)
		e.Total, e.SRTT = total, srtt
		f.tel.Handle(&e)
	}
	report(young, 5*time.Second, stats(1, 1, 0, 0), time.Millisecond)
	report(out, 29*time.Second, stats(10, 20, 0, 0), time.Millisecond)
	if s := find(gather(t, f.reg), "onehop_tcp_connection_sent_bytes_total", nil); len(s) != 0 {
		t.Fatalf("connections younger than 30s have series of their own:\n%s", dump(s))
	}
	report(out, 31*time.Second, stats(1000, 2000, 3, 1), 2*time.Millisecond)
	report(in, 32*time.Second, stats(2000, 1000, 0, 0), 500*time.Microsecond)

	all := gather(t, f.reg)
	common := map[string]string{"source_workload": "sleep", "source_workload_namespace": "ns-a",
		"destination_workload": "web", "destination_workload_namespace": "ns", "destination_service": "web.ns.svc.cluster.local",
		"source_address": clientAP.String(), "destination_address": serverAP.String()}
	for _, c := range []struct {
		reporter, vip                       string
		sent, received, retrans, lost, srtt float64
		age                                 float64
	}{
		{"source", vipAP.String(), 1000, 2000, 3, 1, 0.002, 31},
		{"destination", "", 2000, 1000, 0, 0, 0.0005, 32},
	} {
		for name, want := range map[string]float64{
			"onehop_tcp_connection_sent_bytes_total":     c.sent,
			"onehop_tcp_connection_received_bytes_total": c.received,
			"onehop_tcp_connection_retransmits_total":    c.retrans,
			"onehop_tcp_connection_lost_packets_total":   c.lost,
			"onehop_tcp_connection_srtt_seconds":         c.srtt,
			"onehop_tcp_connection_age_seconds":          c.age,
		} {
			s, ok := connSeries(all, name)[c.reporter]
			if !ok {
				t.Errorf("%s: no series reported by %s:\n%s", name, c.reporter, dump(find(all, name, nil)))
				continue
			}
			wantLabels := maps.Clone(common)
			wantLabels["reporter"], wantLabels["service_address"] = c.reporter, c.vip
			if !maps.Equal(s.labels, wantLabels) || s.value != want {
				t.Errorf("got  %s\nwant %s", s, series{name: name, labels: wantLabels, value: want})
			}
		}
		if n := len(find(all, "onehop_tcp_connection_sent_bytes_total", nil)); n != 2 {
			t.Errorf("%d long connections exported, want 2 (the young one is not)", n)
		}
	}

	// Closed: the series go (the Istio counters keep the connection).
	for _, e := range []datapath.Event{out, in} {
		e.Type, e.First, e.Time = datapath.EventClose, false, t0.Add(40*time.Second)
		f.tel.Handle(&e)
	}
	all = gather(t, f.reg)
	if s := find(all, "onehop_tcp_connection_age_seconds", nil); len(s) != 0 {
		t.Errorf("closed connections still exported:\n%s", dump(s))
	}
	if n := f.tel.Live(); n != 1 {
		t.Errorf("%d live connections, want 1 (the young one)", n)
	}
	if s := one(t, all, "istio_tcp_connections_closed_total", map[string]string{"reporter": "source"}); s.value != 1 {
		t.Errorf("closed: %s, want 1", s)
	}
}

// Prune forgets the connections the kernel no longer tracks (their close event was lost), and
// their series go with them.
func TestPrune(t *testing.T) {
	f := newFixture(t, Options{LongConnection: time.Second})
	for cookie := uint64(1); cookie <= 3; cookie++ {
		e := outbound(datapath.EventReport, cookie, time.Minute)
		e.Src = netip.AddrPortFrom(clientAP.Addr(), uint16(40000+cookie))
		f.tel.Handle(&e)
	}
	if n := len(find(gather(t, f.reg), "onehop_tcp_connection_age_seconds", nil)); n != 3 {
		t.Fatalf("%d long connections exported, want 3", n)
	}
	if n := f.tel.Prune(func(cookie uint64) bool { return cookie == 2 }); n != 2 {
		t.Errorf("Prune forgot %d connections, want 2", n)
	}
	if n := f.tel.Live(); n != 1 {
		t.Errorf("%d live connections after Prune, want 1", n)
	}
	s := find(gather(t, f.reg), "onehop_tcp_connection_age_seconds", nil)
	if len(s) != 1 || s[0].labels["source_address"] != "10.244.1.5:40002" {
		t.Errorf("after Prune, exported:\n%s\nwant only the connection from port 40002", dump(s))
	}
	if n := f.tel.Prune(func(uint64) bool { return true }); n != 0 {
		t.Errorf("Prune with every connection alive forgot %d", n)
	}
}

// A connection whose close event was lost (not yet pruned) and a new one on the same addresses
// are both long: the scrape still works, and exports the newer one.
func TestLongConnectionsSameAddresses(t *testing.T) {
	f := newFixture(t, Options{LongConnection: time.Second})
	stale := outbound(datapath.EventReport, 1, time.Minute)
	stale.Total = stats(111, 0, 0, 0)
	fresh := outbound(datapath.EventReport, 2, 2*time.Second)
	fresh.Established, fresh.Time = t0.Add(2*time.Minute), t0.Add(2*time.Minute+2*time.Second)
	fresh.Total = stats(222, 0, 0, 0)
	f.tel.Handle(&stale)
	f.tel.Handle(&fresh)
	s := find(gather(t, f.reg), "onehop_tcp_connection_sent_bytes_total", nil)
	if len(s) != 1 || s[0].value != 222 {
		t.Errorf("exported:\n%s\nwant the newer connection's 222 bytes", dump(s))
	}
}

// The access log has a JSON line per event of the namespaces whose enrollment asked for it.
func TestAccessLog(t *testing.T) {
	var buf bytes.Buffer
	f := newFixture(t, Options{AccessLog: slog.New(slog.NewJSONHandler(&buf, nil)),
		AccessLogOn: func(netns uint64) bool { return netns == clientNetns }})
	f.pods.Set(serverNetns, serverPod, []netip.Addr{serverAP.Addr()}, true)
	open := outbound(datapath.EventOpen, 1, 0)
	open.First = true
	closing := outbound(datapath.EventClose, 1, 1500*time.Millisecond)
	closing.Total, closing.Delta = stats(150, 225, 3, 1), stats(150, 225, 3, 1)
	closing.SRTT = 300 * time.Microsecond
	refused := failed(2, syscall.ECONNREFUSED, false)
	quiet := []datapath.Event{inbound(datapath.EventOpen, 3, 0), inbound(datapath.EventClose, 3, time.Second)} // server's netns: off
	for _, e := range []datapath.Event{open, quiet[0], closing, quiet[1], refused} {
		f.tel.Handle(&e)
	}

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d access log lines, want 3 (the client's open, close and failed connect):\n%s", len(lines), buf.String())
	}
	conn := map[string]any{"direction": "outbound", "src": clientAP.String(), "dst": serverAP.String(),
		"service": "web.ns.svc.cluster.local", "service_address": vipAP.String(), "reporter": "source",
		"src_workload": "sleep", "src_namespace": "ns-a", "dst_workload": "web", "dst_namespace": "ns", "msg": "connection"}
	with := func(fields map[string]any) map[string]any {
		out := maps.Clone(conn)
		maps.Copy(out, fields)
		return out
	}
	want := []map[string]any{
		with(map[string]any{"event": "open", "bytes_sent": 0.0, "bytes_received": 0.0, "retransmits": 0.0, "lost": 0.0,
			"srtt_ms": 0.0, "duration_ms": 0.0}),
		with(map[string]any{"event": "close", "bytes_sent": 150.0, "bytes_received": 225.0, "retransmits": 3.0, "lost": 1.0,
			"srtt_ms": 0.3, "duration_ms": 1500.0}),
		with(map[string]any{"event": "connect_failed", "error": "connection refused", "reason": "refused"}),
	}
	for i, line := range lines {
		var got map[string]any
		if err := json.Unmarshal([]byte(line), &got); err != nil {
			t.Fatalf("access log line %d is not JSON: %v\n%s", i, err, line)
		}
		for k, v := range want[i] {
			if got[k] != v {
				t.Errorf("line %d: %s = %#v, want %#v\n%s", i, k, got[k], v, line)
			}
		}
		if got["event"] == "connect_failed" {
			for _, k := range []string{"bytes_sent", "duration_ms", "srtt_ms"} {
				if _, ok := got[k]; ok {
					t.Errorf("line %d: a failed connect has %s\n%s", i, k, line)
				}
			}
		}
	}
}

// Without AccessLogOn every namespace is logged; without AccessLog nothing is.
func TestAccessLogDefaults(t *testing.T) {
	var buf bytes.Buffer
	f := newFixture(t, Options{AccessLog: slog.New(slog.NewJSONHandler(&buf, nil))})
	for _, e := range []datapath.Event{outbound(datapath.EventOpen, 1, 0), inbound(datapath.EventOpen, 2, 0)} {
		f.tel.Handle(&e)
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Errorf("%d access log lines without AccessLogOn, want 2:\n%s", n, buf.String())
	}
	f = newFixture(t, Options{AccessLogOn: func(uint64) bool { t.Error("AccessLogOn asked without an access log"); return true }})
	e := outbound(datapath.EventOpen, 1, 0)
	f.tel.Handle(&e)
}

// Events handled from several goroutines while the registry is scraped and connections are
// pruned add up (run with -race).
func TestHandleConcurrently(t *testing.T) {
	f := newFixture(t, Options{LongConnection: time.Second})
	const workers, conns = 4, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range conns {
				cookie := uint64(w*conns + i + 1)
				for _, typ := range []datapath.EventType{datapath.EventOpen, datapath.EventReport, datapath.EventClose} {
					e := outbound(typ, cookie, 2*time.Second)
					e.Src = netip.AddrPortFrom(clientAP.Addr(), uint16(cookie))
					e.First = typ == datapath.EventOpen
					e.Delta = stats(1, 2, 0, 0)
					f.tel.Handle(&e)
				}
			}
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			if _, err := f.reg.Gather(); err != nil {
				t.Errorf("gather while handling: %v", err)
			}
			f.tel.Prune(func(uint64) bool { return true })
		}
	}()
	wg.Wait()
	<-done
	all := gather(t, f.reg)
	for name, want := range map[string]float64{
		"istio_tcp_connections_opened_total": workers * conns,
		"istio_tcp_connections_closed_total": workers * conns,
		"istio_tcp_sent_bytes_total":         3 * workers * conns,
		"istio_tcp_received_bytes_total":     6 * workers * conns,
	} {
		if s := one(t, all, name, nil); s.value != want {
			t.Errorf("%s = %v, want %v", name, s.value, want)
		}
	}
	if n := f.tel.Live(); n != 0 {
		t.Errorf("%d live connections after every close", n)
	}
}

// BenchmarkHandleShortConnection: the agent's work for one connection opened and closed (two
// events), with a new client port each time, as fortio without keep-alive makes them.
func BenchmarkHandleShortConnection(b *testing.B) {
	f := newFixture(&testing.T{}, Options{})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		open := outbound(datapath.EventOpen, uint64(i), 0)
		open.Src = netip.AddrPortFrom(clientAP.Addr(), uint16(i))
		open.First = true
		open.Delta = stats(1100, 1200, 0, 0)
		f.tel.Handle(&open)
		cl := open
		cl.Type, cl.First, cl.Time = datapath.EventClose, false, t0.Add(time.Millisecond)
		cl.SRTT = 50 * time.Microsecond
		f.tel.Handle(&cl)
	}
}

// The access log's writer holds lines until its interval passes or it is closed.
func TestLogWriterFlushesEveryInterval(t *testing.T) {
	var mu sync.Mutex
	var out bytes.Buffer
	w := NewLogWriter(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	}), 50*time.Millisecond)
	w.Write([]byte("one\n"))
	mu.Lock()
	early := out.String()
	mu.Unlock()
	if early != "" {
		t.Errorf("written at once: %q", early)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		got := out.String()
		mu.Unlock()
		if got == "one\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not written within 2s: %q", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.Write([]byte("two\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\ntwo\n" {
		t.Errorf("after Close: %q", out.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// BenchmarkHandleShortConnectionLogged is BenchmarkHandleShortConnection with the access log on.
func BenchmarkHandleShortConnectionLogged(b *testing.B) {
	f := newFixture(&testing.T{}, Options{AccessLog: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		open := outbound(datapath.EventOpen, uint64(i), 0)
		open.Src = netip.AddrPortFrom(clientAP.Addr(), uint16(i))
		open.First = true
		f.tel.Handle(&open)
		cl := open
		cl.Type, cl.First, cl.Time = datapath.EventClose, false, t0.Add(time.Millisecond)
		f.tel.Handle(&cl)
	}
}

// The server side of a connection whose client is on this node takes the service the client
// dialled, not just any service its endpoint serves.
func TestInboundTakesTheServiceDialled(t *testing.T) {
	f := newFixture(t, Options{})
	cfg := webConfig()
	other := netip.MustParseAddrPort("10.96.0.11:80")
	cfg.Services[key(other)] = model.Service{Key: key(other), Name: "outbound|80||aaa.ns.svc.cluster.local",
		Priorities: [][]model.Endpoint{{{Addr: serverAP, Weight: 1}}}}
	f.prog.Set(cfg)
	for _, ev := range []datapath.Event{outbound(datapath.EventOpen, 1, 0), inbound(datapath.EventOpen, 2, 0)} {
		ev.First = true
		f.tel.Handle(&ev)
	}
	all := gather(t, f.reg)
	one(t, all, "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_service_name": "web"})
	// Without a client here, any service of the endpoint (the first by name) is all it can say.
	ev := inbound(datapath.EventOpen, 3, 0)
	ev.Dst = netip.MustParseAddrPort("10.0.9.9:40000")
	ev.First = true
	f.tel.Handle(&ev)
	one(t, gather(t, f.reg), "istio_tcp_connections_opened_total", map[string]string{"reporter": "destination", "destination_service_name": "aaa"})
}
