package workload

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/onehop-mesh/onehop/dataplane/model"
	wapi "github.com/onehop-mesh/onehop/dataplane/workloadapi"
	"github.com/onehop-mesh/onehop/dataplane/xds"
)

// controlPlane is a real go-control-plane Delta ADS server over a linear cache of Address
// resources keyed by their workload API names, as istiod serves them.
type controlPlane struct {
	t     *testing.T
	cache *cachev3.LinearCache
	addr  string
	srv   *grpc.Server

	mu    sync.Mutex
	reqs  []*discoveryv3.DeltaDiscoveryRequest
	resps []*discoveryv3.DeltaDiscoveryResponse
}

func newControlPlane(t *testing.T, initial resources) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, cache: cachev3.NewLinearCache(wapi.TypeURL)}
	for n, a := range initial {
		cp.set(n, a)
	}
	cp.start()
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) start() {
	addr := cp.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var lis net.Listener
	var err error
	// A restart takes the same port; it can take a moment to be free again.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		cp.t.Fatal(err)
	}
	cp.addr = lis.Addr().String()
	cb := serverv3.CallbackFuncs{
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			cp.mu.Lock()
			cp.reqs = append(cp.reqs, proto.Clone(r).(*discoveryv3.DeltaDiscoveryRequest))
			cp.mu.Unlock()
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
			cp.mu.Lock()
			cp.resps = append(cp.resps, proto.Clone(r).(*discoveryv3.DeltaDiscoveryResponse))
			cp.mu.Unlock()
		},
	}
	cp.srv = grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(cp.srv, serverv3.NewServer(context.Background(), cp.cache, cb))
	go cp.srv.Serve(lis)
}

func (cp *controlPlane) stop() { cp.srv.Stop() }

func (cp *controlPlane) set(name string, res proto.Message) {
	if err := cp.cache.UpdateResource(name, res); err != nil {
		cp.t.Fatal(err)
	}
}

func (cp *controlPlane) del(name string) {
	if err := cp.cache.DeleteResource(name); err != nil {
		cp.t.Fatal(err)
	}
}

func (cp *controlPlane) requests() []*discoveryv3.DeltaDiscoveryRequest {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]*discoveryv3.DeltaDiscoveryRequest(nil), cp.reqs...)
}

func (cp *controlPlane) responses() []*discoveryv3.DeltaDiscoveryResponse {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]*discoveryv3.DeltaDiscoveryResponse(nil), cp.resps...)
}

// dataPlane records what the client applies.
type dataPlane struct {
	mu      sync.Mutex
	cfg     model.Config
	applies int // Apply calls
	changes int // ApplyChanged calls
	changed [][]model.Key
	fail    int // fail the next fail calls
}

func (d *dataPlane) apply(cfg model.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail > 0 {
		d.fail--
		return errors.New("map update failed")
	}
	d.cfg, d.applies = cfg, d.applies+1
	return nil
}

func (d *dataPlane) applyChanged(cfg model.Config, changed []model.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cfg, d.changes = cfg, d.changes+1
	d.changed = append(d.changed, changed)
	return nil
}

func (d *dataPlane) counts() (applies, changes int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applies, d.changes
}

// waitConfig waits for the applied config to be want.
func (d *dataPlane) waitConfig(t *testing.T, what string, want map[string]model.Service) time.Duration {
	t.Helper()
	w := model.Config{Services: map[model.Key]model.Service{}}
	for k, s := range want {
		s.Key = key(k)
		w.Services[s.Key] = s
	}
	start := time.Now()
	deadline := start.Add(5 * time.Second)
	for {
		d.mu.Lock()
		cfg := d.cfg
		d.mu.Unlock()
		if cfg.Services != nil && len(cfg.Services) == len(w.Services) && equalConfig(cfg, w) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: applied config\n%swant\n%s", what, dump(cfg), dump(w))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func equalConfig(a, b model.Config) bool {
	for k, s := range b.Services {
		if got, ok := a.Services[k]; !ok || !sameService(got, s) {
			return false
		}
	}
	return len(a.Services) == len(b.Services)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

func startClient(t *testing.T, cp *controlPlane, dp *dataPlane, incremental bool, set ...func(*Client)) (*Client, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := &Client{
		Addr:    cp.addr,
		Node:    &corev3.Node{Id: "n1", Cluster: "onehop"},
		Apply:   dp.apply,
		Log:     testLogger(t),
		Backoff: xds.Backoff{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond},
		Metrics: NewMetrics(reg),
	}
	if incremental {
		c.ApplyChanged = dp.applyChanged
	}
	for _, f := range set {
		f(c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return c, reg
}

func echoService() (string, *wapi.Address) {
	return service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))
}

func TestClientFollowsControlPlane(t *testing.T) {
	cp := newControlPlane(t, resources{}.
		add(echoService()).
		add(workload("Kubernetes//Pod/demo/echo-1", ips("10.244.1.5"), of(echo))).
		add(workload("Kubernetes//Pod/demo/echo-2", ips("10.244.2.6"), of(echo))))
	dp := &dataPlane{}
	c, reg := startClient(t, cp, dp, true)

	dp.waitConfig(t, "initial sync", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.2.6:8080", 1)),
	})
	waitFor(t, "ready", c.Ready)
	if a, ch := dp.counts(); a != 1 || ch != 0 {
		t.Errorf("first config: %d Apply, %d ApplyChanged calls; want one Apply", a, ch)
	}

	// The wire: a wildcard subscription under Istio's type URL, resources packed under it.
	reqs := cp.requests()
	if first := reqs[0]; first.GetTypeUrl() != wapi.TypeURL || len(first.GetResourceNamesSubscribe()) != 0 || first.GetNode().GetId() != "n1" {
		t.Errorf("initial request %v", first)
	}
	for _, r := range cp.responses() {
		for _, res := range r.GetResources() {
			if res.GetResource().GetTypeUrl() != wapi.TypeURL {
				t.Errorf("the linear cache packed %s as %s, want %s", res.GetName(), res.GetResource().GetTypeUrl(), wapi.TypeURL)
			}
		}
	}

	// A workload added at runtime reaches the data plane, through ApplyChanged.
	cp.set(workload("Kubernetes//Pod/demo/echo-3", ips("10.244.2.7"), of(echo), capacity(2)))
	d := dp.waitConfig(t, "workload added", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.2.6:8080", 1), ep("10.244.2.7:8080", 2)),
	})
	t.Logf("workload added -> applied in %v", d)
	if d > 2*time.Second {
		t.Errorf("a workload took %v to reach the data plane", d)
	}
	dp.mu.Lock()
	if last := dp.changed[len(dp.changed)-1]; len(last) != 1 || last[0] != key("10.96.0.10:80") {
		t.Errorf("ApplyChanged with %v, want the one frontend", last)
	}
	dp.mu.Unlock()

	// And removed.
	cp.del("Kubernetes//Pod/demo/echo-1")
	dp.waitConfig(t, "workload removed", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.2.6:8080", 1), ep("10.244.2.7:8080", 2)),
	})

	// A change that moves no endpoint is ACKed without an Apply; the identity follows it.
	a0, c0 := dp.counts()
	cp.set(workload("Kubernetes//Pod/demo/echo-2", ips("10.244.2.6"), of(echo), func(w *wapi.Workload) { w.CanonicalRevision = "v2" }))
	waitFor(t, "identity updated", func() bool {
		id, ok := c.Identity(netip.MustParseAddr("10.244.2.6"))
		return ok && id.CanonicalRevision == "v2"
	})
	waitFor(t, "ACK", func() bool { return value(c.Metrics.updates.WithLabelValues("ack")) >= 4 })
	if a, ch := dp.counts(); a != a0 || ch != c0 {
		t.Errorf("an unchanged config was applied: %d/%d calls, were %d/%d", a, ch, a0, c0)
	}

	// A service added and removed.
	cp.set(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 9090)))
	dp.waitConfig(t, "service added (no endpoints yet: programmed empty)", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.2.6:8080", 1), ep("10.244.2.7:8080", 2)),
		"10.96.0.11:80": fe(other),
	})
	cp.del(echo)
	dp.waitConfig(t, "service removed", map[string]model.Service{"10.96.0.11:80": fe(other)})
	if svc, ok := c.ServiceByVIP(netip.MustParseAddr("10.96.0.11")); !ok || svc.Name != "other" {
		t.Errorf("ServiceByVIP = %+v %v", svc, ok)
	}

	// Every response was ACKed.
	for _, r := range cp.requests() {
		if r.GetErrorDetail() != nil {
			t.Errorf("NACK: %v", r.GetErrorDetail())
		}
	}
	st := c.Status()
	if !st.Ready || !st.Connected || st.Services != 1 || st.Workloads != 2 || st.Frontends != 1 || st.Empty != 1 || len(c.Services()) != 1 {
		t.Errorf("status %+v", st)
	}
	if got := value(c.Metrics.frontends.WithLabelValues("empty")); got != 1 {
		t.Errorf("onehop_workload_frontends{kind=empty} = %v", got)
	}
	if mfs, err := reg.Gather(); err != nil || len(mfs) != 8 {
		t.Errorf("metrics: %d families, %v", len(mfs), err)
	}
}

func TestClientReconnects(t *testing.T) {
	cp := newControlPlane(t, resources{}.
		add(echoService()).
		add(workload("w1", ips("10.244.1.5"), of(echo))).
		add(workload("w2", ips("10.244.1.6"), of(echo))))
	dp := &dataPlane{}
	c, _ := startClient(t, cp, dp, false)
	dp.waitConfig(t, "initial sync", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 1)),
	})

	// The control plane goes away: the applied config stays, nothing is applied.
	cp.stop()
	waitFor(t, "disconnected", func() bool { return !c.Status().Connected })
	before, _ := dp.counts()
	time.Sleep(200 * time.Millisecond) // a few reconnect attempts
	if a, _ := dp.counts(); a != before || !c.Ready() {
		t.Fatalf("while disconnected: %d applies (were %d), ready %v", a, before, c.Ready())
	}

	// Meanwhile w1 goes and w3 comes; the client resyncs from what it holds.
	cp.del("w1")
	cp.set(workload("w3", ips("10.244.1.7"), of(echo)))
	nreq := len(cp.requests())
	cp.start()
	dp.waitConfig(t, "resync after restart", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.6:8080", 1), ep("10.244.1.7:8080", 1)),
	})
	first := cp.requests()[nreq]
	held := first.GetInitialResourceVersions()
	if len(held) != 3 || held[echo] == "" || held["w1"] == "" || held["w2"] == "" {
		t.Errorf("reconnect's initial_resource_versions = %v, want the 3 resources held", held)
	}
	var removed bool
	for _, r := range cp.responses() {
		for _, n := range r.GetRemovedResources() {
			removed = removed || n == "w1"
		}
	}
	if !removed {
		t.Error("the server never sent w1's removal")
	}
	if got := value(c.Metrics.reconnects); got < 1 {
		t.Errorf("reconnects = %v", got)
	}
	if !c.Ready() || c.LastError() != nil {
		t.Errorf("after resync: ready %v, last error %v", c.Ready(), c.LastError())
	}
}

func TestClientNACKsBadResources(t *testing.T) {
	_, misnamed := service("demo", "x.demo.svc.cluster.local", vips("10.96.0.12"), ports(80, 80))
	cp := newControlPlane(t, resources{}.
		add(echoService()).
		add(workload("w1", ips("10.244.1.5"), of(echo))))
	// Bytes that are no Address: field 1 (workload) holding a truncated varint.
	cp.set("garbage", wrapperspb.Bytes([]byte{0xff, 0xff, 0xff}))
	cp.set("demo/misnamed", misnamed)
	dp := &dataPlane{}
	c, _ := startClient(t, cp, dp, false)
	dp.waitConfig(t, "the valid part applied", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1)),
	})
	waitFor(t, "NACK", func() bool {
		for _, r := range cp.requests() {
			if r.GetErrorDetail() != nil {
				return true
			}
		}
		return false
	})
	var nack *discoveryv3.DeltaDiscoveryRequest
	for _, r := range cp.requests() {
		if r.GetErrorDetail() != nil {
			nack = r
		}
	}
	msg := nack.GetErrorDetail().GetMessage()
	if !strings.Contains(msg, `"garbage": decode`) || !strings.Contains(msg, `"demo/misnamed": service resource must be named`) || nack.GetResponseNonce() == "" {
		t.Errorf("NACK %v", nack)
	}
	if !c.Ready() || c.LastError() == nil {
		t.Errorf("ready %v, last error %v", c.Ready(), c.LastError())
	}
	if got := value(c.Metrics.rejected); got != 2 {
		t.Errorf("rejected resources = %v", got)
	}

	// Fixed: replaced by a valid resource, ACKed, applied.
	cp.set(workload("garbage", ips("10.244.1.6"), of(echo)))
	cp.del("demo/misnamed")
	dp.waitConfig(t, "fixed", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 1)),
	})
	waitFor(t, "ACK clears the error", func() bool { return c.LastError() == nil })
}

func TestClientRetriesFailedApply(t *testing.T) {
	cp := newControlPlane(t, resources{}.add(echoService()).add(workload("w1", ips("10.244.1.5"), of(echo))))
	dp := &dataPlane{fail: 1}
	c, _ := startClient(t, cp, dp, true)
	waitFor(t, "NACK of the failed Apply", func() bool {
		for _, r := range cp.requests() {
			if strings.Contains(r.GetErrorDetail().GetMessage(), "programming the data plane failed") {
				return true
			}
		}
		return false
	})
	if c.Ready() {
		t.Error("ready although nothing was applied")
	}
	// The next response applies the whole config (Apply, not ApplyChanged).
	cp.set(workload("w2", ips("10.244.1.6"), of(echo)))
	dp.waitConfig(t, "applied after the failure", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 1)),
	})
	if a, ch := dp.counts(); a != 1 || ch != 0 {
		t.Errorf("%d Apply, %d ApplyChanged; want one Apply", a, ch)
	}
	waitFor(t, "ready", c.Ready)
}

// value reads a counter or gauge.
func value(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// A starting agent that adopted pinned services holds back a first config with no service at
// all, and applies the first one with services.
func TestClientHoldsAnEmptyFirstConfigOverAdoptedServices(t *testing.T) {
	cp := newControlPlane(t, resources{}.add(workload("Kubernetes//Pod/demo/lonely", ips("10.244.1.7"))))
	dp := &dataPlane{}
	c, _ := startClient(t, cp, dp, true, func(c *Client) { c.Adopted = 2 })
	waitFor(t, "the empty config to be held", func() bool { return c.Status().HeldEmpty })
	time.Sleep(100 * time.Millisecond)
	if a, ch := dp.counts(); a+ch != 0 || c.Ready() {
		t.Fatalf("%d applies, ready %v: the empty first config must not be applied", a+ch, c.Ready())
	}
	cp.set(echoService())
	cp.set(workload("Kubernetes//Pod/demo/echo-1", ips("10.244.1.5"), of(echo)))
	dp.waitConfig(t, "the first config with a service", map[string]model.Service{
		"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1)),
	})
	waitFor(t, "ready", c.Ready)
	if c.Status().HeldEmpty {
		t.Error("still reported as held")
	}
}
