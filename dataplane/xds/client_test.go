package xds

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

const testNode = "onehop-test-node"

// controlPlane is a real go-control-plane ADS server (snapshot cache, SotW and Delta) on
// loopback, recording the NACKs it receives.
type controlPlane struct {
	addr  string
	cache cachev3.SnapshotCache
	stop  func()

	mu    sync.Mutex
	nacks []nack
}

type nack struct {
	typeURL string
	detail  *statuspb.Status
}

func startControlPlane(t *testing.T, addr string) *controlPlane {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen for the control plane on %s: %v", addr, err)
	}
	cp := &controlPlane{
		addr: lis.Addr().String(),
		cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, log.LoggerFuncs{
			ErrorFunc: func(f string, a ...any) { t.Logf("control plane: "+f, a...) },
		}),
	}
	record := func(typeURL string, detail *statuspb.Status) {
		if detail != nil {
			cp.mu.Lock()
			cp.nacks = append(cp.nacks, nack{typeURL, detail})
			cp.mu.Unlock()
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	xs := serverv3.NewServer(ctx, cp.cache, serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
			record(r.GetTypeUrl(), r.GetErrorDetail())
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
			record(r.GetTypeUrl(), r.GetErrorDetail())
			return nil
		},
	})
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, xs)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis)
	}()
	cp.stop = sync.OnceFunc(func() {
		g.Stop()
		cancel()
		<-served
	})
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) set(t *testing.T, version string, consistent bool, resources ...proto.Message) {
	t.Helper()
	byType := map[resourcev3.Type][]types.Resource{}
	for _, r := range resources {
		typ := resourcev3.ListenerType
		switch r.(type) {
		case *clusterv3.Cluster:
			typ = resourcev3.ClusterType
		case *endpointv3.ClusterLoadAssignment:
			typ = resourcev3.EndpointType
		case *routev3.RouteConfiguration:
			typ = resourcev3.RouteType
		}
		byType[typ] = append(byType[typ], r)
	}
	snap, err := cachev3.NewSnapshot(version, byType)
	if err != nil {
		t.Fatalf("snapshot %s: %v", version, err)
	}
	if consistent {
		if err := snap.Consistent(); err != nil {
			t.Fatalf("snapshot %s is not consistent: %v", version, err)
		}
	}
	if err := cp.cache.SetSnapshot(context.Background(), testNode, snap); err != nil {
		t.Fatalf("set snapshot %s: %v", version, err)
	}
}

func (cp *controlPlane) nacked() []nack {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]nack(nil), cp.nacks...)
}

// recorder is the Apply callback: it keeps every config and can be told to fail.
type recorder struct {
	mu      sync.Mutex
	configs []model.Config
	fail    func(model.Config) error
}

func (r *recorder) apply(cfg model.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		if err := r.fail(cfg); err != nil {
			return err
		}
	}
	r.configs = append(r.configs, cfg)
	return nil
}

func (r *recorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.configs)
}

func (r *recorder) last() model.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.configs) == 0 {
		return model.Config{}
	}
	return r.configs[len(r.configs)-1]
}

func (r *recorder) setFail(f func(model.Config) error) {
	r.mu.Lock()
	r.fail = f
	r.mu.Unlock()
}

type testClient struct {
	*Client
	rec *recorder
	reg *prometheus.Registry
}

// startClient runs a Client against addr until the test ends, then checks Run returned.
// Each set function adjusts the Client before it runs.
func startClient(t *testing.T, addr string, delta bool, set ...func(*testClient)) *testClient {
	t.Helper()
	tc := &testClient{rec: &recorder{}, reg: prometheus.NewRegistry()}
	tc.Client = &Client{
		Addr: addr, NodeID: testNode, Cluster: "onehop-test", Delta: delta,
		Apply:   tc.rec.apply,
		Metrics: NewMetrics(tc.reg),
		Log:     slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Backoff: Backoff{Min: 50 * time.Millisecond, Max: 400 * time.Millisecond},
	}
	for _, f := range set {
		f(tc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5s of cancel")
		}
	})
	return tc
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// metric reads one counter or gauge from the client's registry (0 if absent).
func (tc *testClient) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := tc.reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				if !found {
					continue metrics
				}
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tc *testClient) waitConfig(t *testing.T, want model.Config) {
	t.Helper()
	waitFor(t, 5*time.Second, "the client to apply\n"+dump(want), func() bool { return reflect.DeepEqual(tc.rec.last(), want) })
}

// The lab's two services: web (tcp_proxy, EDS) and api (HTTP, RDS, EDS).
func webAPI(webEndpoints ...ep) []proto.Message {
	return []proto.Message{
		listener("web", "10.96.0.10", 80, chain("", tcpProxy("web"))),
		listener("api", "10.96.0.11", 80, chain("", hcmRDS("api-routes"))),
		routeTo("api-routes", "api"),
		edsCluster("web", rr), edsCluster("api", rnd),
		cla("web", webEndpoints...),
		cla("api", ep{addr: "10.1.1.1:9090"}),
	}
}

func webAPIConfig(webEndpoints ...model.Endpoint) model.Config {
	return config(svc("10.96.0.10:80", "web", model.RoundRobin, webEndpoints), apiService)
}

var apiService = svc("10.96.0.11:80", "api", model.Random, []model.Endpoint{mep("10.1.1.1:9090", 1)})

var protocols = []struct {
	name  string
	delta bool
}{{"sotw", false}, {"delta", true}}

func TestClientFollowsControlPlane(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"}, ep{addr: "10.1.0.2:8080"})...)
			c := startClient(t, cp.addr, p.delta)

			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1), mep("10.1.0.2:8080", 1)))
			waitFor(t, 5*time.Second, "Ready", c.Ready)
			if err := c.LastError(); err != nil {
				t.Errorf("LastError = %v after a clean sync", err)
			}

			// An endpoint joins, one drains: only the healthy ones are applied.
			cp.set(t, "v2", true, webAPI(ep{addr: "10.1.0.1:8080", health: corev3.HealthStatus_DRAINING},
				ep{addr: "10.1.0.2:8080"}, ep{addr: "10.1.0.3:8080", weight: w(2)})...)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.2:8080", 1), mep("10.1.0.3:8080", 2)))

			// A service goes away: its listener, route, cluster and endpoints with it.
			cp.set(t, "v3", true, webAPI()[0], webAPI()[3], cla("web", ep{addr: "10.1.0.2:8080"}))
			c.waitConfig(t, config(svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.2:8080", 1)})))

			if got := c.metric(t, "onehop_agent_xds_connected"); got != 1 {
				t.Errorf("onehop_agent_xds_connected = %v, want 1", got)
			}
			for _, typ := range []string{"lds", "rds", "cds", "eds"} {
				if got := c.metric(t, "onehop_agent_xds_updates_total", "type", typ, "result", "ack"); got < 1 {
					t.Errorf("onehop_agent_xds_updates_total{type=%q,result=ack} = %v, want >= 1", typ, got)
				}
			}
			if n := cp.nacked(); len(n) != 0 {
				t.Errorf("the control plane got NACKs for valid snapshots: %v", n)
			}
		})
	}
}

func TestClientNACKsBadUpdates(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
			c := startClient(t, cp.addr, p.delta)
			good := webAPIConfig(mep("10.1.0.1:8080", 1))
			c.waitConfig(t, good)
			calls := c.rec.calls()

			// The web listener now names a cluster the control plane does not have.
			bad := webAPI(ep{addr: "10.1.0.1:8080"})
			bad[0] = listener("web", "10.96.0.10", 80, chain("", tcpProxy("nope")))
			cp.set(t, "v2", true, bad...)
			waitFor(t, 5*time.Second, "the control plane to get a NACK", func() bool { return len(cp.nacked()) > 0 })
			n := cp.nacked()[0]
			if n.typeURL != resourcev3.ListenerType || n.detail.GetCode() != int32(codes.InvalidArgument) ||
				!strings.Contains(n.detail.GetMessage(), `listener "web" chain #0: cluster "nope" not found in CDS`) {
				t.Fatalf("NACK = %s %v, want an LDS INVALID_ARGUMENT naming listener web and cluster nope", n.typeURL, n.detail)
			}
			// The web service keeps its previous version (Envoy keeps the last good version of
			// a rejected resource); the api service is untouched, so nothing is re-applied.
			time.Sleep(200 * time.Millisecond)
			if got := c.rec.calls(); got != calls {
				t.Fatalf("Apply called %d more times after an update that changed nothing programmable", got-calls)
			}
			if r := c.Report(); len(r.Rejected) != 1 || r.Rejected[0].Service != "10.96.0.10:80" || !r.Rejected[0].Kept {
				t.Errorf("Report().Rejected = %+v, want 10.96.0.10:80 kept at its previous version", r.Rejected)
			}
			want := []ServiceState{
				{Service: "10.96.0.10:80", Name: "web", Policy: "round-robin", Endpoints: 1, Programmed: true, Issue: "rejected",
					Reason: `listener "web" chain #0: cluster "nope" not found in CDS (unknown cluster reference)`},
				{Service: "10.96.0.11:80", Name: "api", Policy: "random", Endpoints: 1, Programmed: true, Issue: "needs_waypoint",
					Reason: `virtual host "all": routes "canary", "api" match on path or headers and go elsewhere than the catch-all route; at connect() every connection follows the catch-all (give the service a waypoint for L7 routing)`},
			}
			if got := c.Services(); !reflect.DeepEqual(got, want) {
				t.Errorf("Services() =\n%+v\nwant\n%+v", got, want)
			}
			if got := c.metric(t, "onehop_agent_xds_service_issue", "service", "10.96.0.10:80", "issue", "kept_previous"); got != 1 {
				t.Errorf("onehop_agent_xds_service_issue{service=10.96.0.10:80,issue=kept_previous} = %v, want 1", got)
			}
			if err := c.LastError(); err == nil || !strings.Contains(err.Error(), `cluster "nope"`) {
				t.Errorf("LastError = %v, want the NACK reason", err)
			}
			if got := c.metric(t, "onehop_agent_xds_nacks_total", "type", "lds"); got < 1 {
				t.Errorf("onehop_agent_xds_nacks_total{type=lds} = %v, want >= 1", got)
			}
			if got := c.metric(t, "onehop_agent_xds_updates_total", "type", "lds", "result", "nack"); got < 1 {
				t.Errorf("onehop_agent_xds_updates_total{type=lds,result=nack} = %v, want >= 1", got)
			}

			// A fixed snapshot is applied at once: the control plane resends the rejected one
			// after each NACK, and the client answers without waiting, so nothing holds the
			// correction back (it once waited up to 23 s in a NACK backoff).
			start := time.Now()
			cp.set(t, "v3", true, webAPI(ep{addr: "10.1.0.4:8080"})...)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.4:8080", 1)))
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("the corrected config took %v to apply after NACKs", d)
			}
			waitFor(t, 5*time.Second, "LastError to clear", func() bool { return c.LastError() == nil })
			if r := c.Report(); len(r.Rejected) != 0 {
				t.Errorf("Report().Rejected = %+v after the fix, want none", r.Rejected)
			}
		})
	}
}

func TestClientNACKsWhenApplyFails(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
			c := startClient(t, cp.addr, p.delta)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1)))

			c.rec.setFail(func(cfg model.Config) error {
				if web, ok := cfg.Services[key("10.96.0.10:80")]; ok && len(web.Priorities) > 0 && len(web.Priorities[0]) > 1 {
					return errors.New("bpf map update: no space left on device")
				}
				return nil
			})
			cp.set(t, "v2", true, webAPI(ep{addr: "10.1.0.1:8080"}, ep{addr: "10.1.0.2:8080"})...)
			waitFor(t, 5*time.Second, "a NACK for the failed Apply", func() bool {
				for _, n := range cp.nacked() {
					if n.typeURL == resourcev3.EndpointType && strings.Contains(n.detail.GetMessage(), "programming the data plane failed: bpf map update") {
						return true
					}
				}
				return false
			})
			c.rec.setFail(nil)
			// The rejected endpoint assignment is not part of the state: the next update is
			// built on the accepted one.
			cp.set(t, "v3", true, webAPI(ep{addr: "10.1.0.3:8080"})...)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.3:8080", 1)))
		})
	}
}

// TestClientWarming: a listener switched to a cluster whose endpoints have not arrived keeps
// its service as programmed, and moves when they arrive.
func TestClientWarming(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
			c := startClient(t, cp.addr, p.delta)
			before := webAPIConfig(mep("10.1.0.1:8080", 1))
			c.waitConfig(t, before)
			ldsAcks := c.metric(t, "onehop_agent_xds_updates_total", "type", "lds", "result", "ack")

			warming := append(webAPI(ep{addr: "10.1.0.1:8080"}), edsCluster("web-v2", rr))
			warming[0] = listener("web", "10.96.0.10", 80, chain("", tcpProxy("web-v2")))
			cp.set(t, "v2", false, warming...) // no endpoints for web-v2 yet
			waitFor(t, 5*time.Second, "the v2 listener to be accepted", func() bool {
				return c.metric(t, "onehop_agent_xds_updates_total", "type", "lds", "result", "ack") > ldsAcks
			})
			if got := c.rec.last(); !reflect.DeepEqual(got, before) {
				t.Fatalf("while web-v2 warms the applied config is\n%s\nwant the previous\n%s", dump(got), dump(before))
			}
			if n := cp.nacked(); len(n) != 0 {
				t.Fatalf("a warming cluster was NACKed: %v", n)
			}

			cp.set(t, "v3", true, append(warming, cla("web-v2", ep{addr: "10.1.2.1:8080"}))...)
			c.waitConfig(t, config(svc("10.96.0.10:80", "web-v2", model.RoundRobin, []model.Endpoint{mep("10.1.2.1:8080", 1)}), apiService))
		})
	}
}

func TestClientSurvivesControlPlaneRestart(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
			c := startClient(t, cp.addr, p.delta)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1)))
			waitFor(t, 5*time.Second, "Ready", c.Ready)
			calls := c.rec.calls()

			cp.stop()
			waitFor(t, 5*time.Second, "the client to notice the lost stream", func() bool {
				return c.LastError() != nil && c.metric(t, "onehop_agent_xds_connected") == 0
			})
			time.Sleep(500 * time.Millisecond) // a few reconnect attempts against nothing
			if got := c.rec.calls(); got != calls {
				t.Fatalf("Apply called %d times while the control plane was down, last with\n%s", got-calls, dump(c.rec.last()))
			}
			if !c.Ready() {
				t.Fatal("Ready turned false while the control plane was down; the applied config is still programmed")
			}

			// The control plane comes back on the same address with changed state: web has
			// moved, api is gone.
			cp2 := startControlPlane(t, cp.addr)
			cp2.set(t, "after-restart", true, listener("web", "10.96.0.10", 80, chain("", tcpProxy("web"))),
				edsCluster("web", rr), cla("web", ep{addr: "10.1.0.9:8080"}))
			c.waitConfig(t, config(svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.9:8080", 1)})))
			if got := c.metric(t, "onehop_agent_xds_reconnects_total"); got < 1 {
				t.Errorf("onehop_agent_xds_reconnects_total = %v, want >= 1", got)
			}
			if got := c.metric(t, "onehop_agent_xds_connected"); got != 1 {
				t.Errorf("onehop_agent_xds_connected = %v after reconnecting, want 1", got)
			}
		})
	}
}

// TestRunReturnsOnCancel: with or without a control plane, cancelling Run's context makes
// it return and leaves no client goroutines behind.
func TestRunReturnsOnCancel(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
	// A port nothing listens on: the client keeps retrying.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()

	for _, addr := range []string{cp.addr, closed} {
		for _, p := range protocols {
			rec := &recorder{}
			c := &Client{Addr: addr, NodeID: testNode, Delta: p.delta, Apply: rec.apply,
				Backoff: Backoff{Min: 20 * time.Millisecond, Max: 100 * time.Millisecond}}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			if addr == cp.addr {
				waitFor(t, 5*time.Second, "Ready", c.Ready)
			} else {
				waitFor(t, 5*time.Second, "a connection error", func() bool { return c.LastError() != nil })
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run(%s, %s) = %v after cancel, want nil", addr, p.name, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("Run(%s, %s) did not return within 5s of cancel", addr, p.name)
			}
		}
	}
	waitFor(t, 5*time.Second, "client goroutines to end", func() bool { return clientGoroutines() == "" })
}

// clientGoroutines returns the stacks of goroutines belonging to a Client or a gRPC client
// connection.
func clientGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, sig := range []string{"xds.(*Client)", "grpc.(*ClientConn)", "grpc.(*addrConn)", "transport.(*http2Client)", "grpc.(*ccBalancerWrapper)"} {
			if strings.Contains(g, sig) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

func TestClientRejectsMisconfiguration(t *testing.T) {
	for _, c := range []*Client{{Apply: func(model.Config) error { return nil }}, {Addr: "127.0.0.1:1"}} {
		if err := c.Run(context.Background()); err == nil {
			t.Errorf("Run(%+v) = nil, want an error naming the missing field", c)
		}
	}
}

// TestFirstApplyIsTheWholeConfig: a client that has programmed nothing yet applies only a
// complete config (clusters, listeners and all they name): a restarted agent adopts maps that
// are serving traffic, and applying the clusters before the listeners arrived would empty them.
func TestFirstApplyIsTheWholeConfig(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"}, ep{addr: "10.1.0.2:8080"})...)
			c := startClient(t, cp.addr, p.delta)
			want := webAPIConfig(mep("10.1.0.1:8080", 1), mep("10.1.0.2:8080", 1))
			c.waitConfig(t, want)
			c.rec.mu.Lock()
			first := c.rec.configs[0]
			c.rec.mu.Unlock()
			if !reflect.DeepEqual(first, want) {
				t.Errorf("first config applied:\n%swant the whole config\n%s", dump(first), dump(want))
			}
		})
	}
}

// A service scaled to zero is programmed empty, whether the control plane says so with an empty
// assignment or (Delta) by removing the assignment: new connections must be refused, never sent
// to the pods that are gone. Scaled back, it balances again.
func TestClientScaleToZeroAndBack(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
			c := startClient(t, cp.addr, p.delta)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1)))

			empty := config(svc("10.96.0.10:80", "web", model.RoundRobin), apiService)
			cp.set(t, "v2", true, webAPI()...) // an empty assignment, as istiod sends
			c.waitConfig(t, empty)
			if p.delta { // the assignment removed outright
				all := webAPI()
				cp.set(t, "v3", false, append(all[:5], all[6])...) // web's assignment gone
				time.Sleep(300 * time.Millisecond)
				if got := c.rec.last(); !reflect.DeepEqual(got, empty) {
					t.Fatalf("after the assignment was removed: %s", dump(got))
				}
			}
			cp.set(t, "v4", true, webAPI(ep{addr: "10.1.0.2:8080"})...)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.2:8080", 1)))
			if n := cp.nacked(); len(n) != 0 {
				t.Errorf("NACKs: %v", n)
			}
			if !c.Ready() {
				t.Error("not ready")
			}
		})
	}
}

// A starting agent that adopted services pinned by the one before does not apply a first config
// with no service at all (what istiod answers a node identity it serves nothing, e.g. router~):
// it says so, stays unready, and applies the first config that has services.
func TestClientHoldsAnEmptyFirstConfigOverAdoptedServices(t *testing.T) {
	cp := startControlPlane(t, "127.0.0.1:0")
	empty, err := cachev3.NewSnapshot("v1", map[resourcev3.Type][]types.Resource{
		resourcev3.ClusterType: {}, resourcev3.ListenerType: {}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), testNode, empty); err != nil {
		t.Fatal(err)
	}
	c := startClient(t, cp.addr, false, func(tc *testClient) { tc.Adopted = 3 })
	waitFor(t, 5*time.Second, "the empty config to be held", c.HeldEmpty)
	time.Sleep(100 * time.Millisecond)
	if n := c.rec.calls(); n != 0 || c.Ready() {
		t.Fatalf("Apply called %d times, ready %v: the empty first config must not be applied", n, c.Ready())
	}
	cp.set(t, "v2", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
	c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1)))
	if c.HeldEmpty() || !c.Ready() {
		t.Errorf("after a config with services: held %v, ready %v", c.HeldEmpty(), c.Ready())
	}
}

// An endpoint assignment the control plane never sends is taken as empty after the initial
// fetch timeout, as Envoy does: its services are programmed with no endpoints and the client
// becomes ready, instead of pending (unready) for ever. The real assignment, when it comes,
// replaces it.
func TestClientTakesAMissingAssignmentAsEmptyAfterTheFetchTimeout(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			all := webAPI(ep{addr: "10.1.0.1:8080"})
			cp.set(t, "v1", false, slices.Concat(all[:5], all[6:])...) // no assignment for web
			start := time.Now()
			c := startClient(t, cp.addr, p.delta, func(tc *testClient) { tc.InitialFetchTimeout = 300 * time.Millisecond })
			waitFor(t, 5*time.Second, "ready", c.Ready)
			if d := time.Since(start); d < 300*time.Millisecond {
				t.Errorf("ready after %v, before the fetch timeout", d)
			}
			got := c.rec.last()
			if web, ok := got.Services[key("10.96.0.10:80")]; !ok || len(web.Priorities) != 0 {
				t.Fatalf("web = %+v (present %v), want programmed with no endpoints", web, ok)
			}
			if p.delta { // go-control-plane's SotW ADS cache answers an EDS request only with every name
				if api := got.Services[key("10.96.0.11:80")]; len(api.Priorities) != 1 {
					t.Errorf("api = %+v, want its endpoint", api)
				}
			}
			cp.set(t, "v2", true, all...)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1)))
		})
	}
}
