package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

const (
	webCluster = "outbound|80||web.default.svc.cluster.local"
	dbCluster  = "outbound|5432||db.data.svc.cluster.local"
	// propagation is how long a store change may take to reach a connected client.
	propagation = 2 * time.Second
)

// fixture is a dual-stack store with an HTTP service on both families, a TCP service on IPv4
// only (plus a UDP port istiod would not serve) and three pods on two nodes.
func fixture(t *testing.T) *services.Store {
	t.Helper()
	st := services.New(v4CIDR, v6CIDR)
	for _, svc := range []services.Service{
		{Namespace: "default", Name: "web", Selector: map[string]string{"app": "web"},
			Ports: []services.Port{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}}},
		{Namespace: "data", Name: "db", Selector: map[string]string{"app": "db"}, ClusterIPs: addrs("10.96.0.10"),
			Ports: []services.Port{{Name: "tcp-pg", Port: 5432, TargetPort: 5433, Protocol: "TCP"},
				{Name: "statsd", Port: 8125, TargetPort: 8125, Protocol: "UDP"}}},
	} {
		if _, err := st.UpsertService(svc); err != nil {
			t.Fatalf("UpsertService(%s): %v", svc.Key(), err)
		}
	}
	st.UpsertPod(webPod("web-1", "n1", "10.244.1.2", "fd00:10:244:1::2", true))
	st.UpsertPod(webPod("web-2", "n2", "10.244.2.2", "fd00:10:244:2::2", true))
	st.UpsertPod(services.Pod{Namespace: "data", Name: "db-1", Node: "n2", IPs: addrs("10.244.2.3", "fd00:10:244:2::3"),
		Labels: map[string]string{"app": "db"}, Ready: true})
	return st
}

func webPod(name, node, v4, v6 string, ready bool) services.Pod {
	return services.Pod{Namespace: "default", Name: name, Node: node, IPs: addrs(v4, v6),
		Labels: map[string]string{"app": "web"}, Ready: ready}
}

// fixtureWant is what every client of the fixture must hold.
var fixtureWant = []string{
	"cluster PassthroughCluster ORIGINAL_DST CLUSTER_PROVIDED eds= ads=false",
	"route 80 allow_any [*] / -> PassthroughCluster",
	"cluster " + dbCluster + " EDS RANDOM eds=" + dbCluster + " ads=true",
	"cluster " + webCluster + " EDS RANDOM eds=" + webCluster + " ads=true",
	"endpoint " + dbCluster + " zone=n2 p0 lw=1 10.244.2.3:5433/TCP HEALTHY w=1",
	"endpoint " + webCluster + " zone=n1 p0 lw=1 10.244.1.2:8080/TCP+[fd00:10:244:1::2]:8080/TCP HEALTHY w=1",
	"endpoint " + webCluster + " zone=n2 p0 lw=1 10.244.2.2:8080/TCP+[fd00:10:244:2::2]:8080/TCP HEALTHY w=1",
	"listener 10.96.0.10_5432 10.96.0.10:5432/TCP bind=false OUTBOUND  -> envoy.filters.network.tcp_proxy tcp " + dbCluster,
	"listener 0.0.0.0_80 0.0.0.0:80/TCP bind=false OUTBOUND  -> envoy.filters.network.http_connection_manager http rds=80 ads=true",
	"listener [::]_80 [::]:80/TCP bind=false OUTBOUND  -> envoy.filters.network.http_connection_manager http rds=80 ads=true",
	"route 80 web.default.svc.cluster.local:80 [web web.default web.default.svc.cluster.local 10.96.0.1 10.96.0.1:80 [fd00:10:96::1] [fd00:10:96::1]:80] / -> " + webCluster,
}

// syncBuffer collects log output written by the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serve runs a Server on 127.0.0.1:0 until the test ends and returns a client connection to it.
func serve(t testing.TB, st *services.Store, opts Options) (*grpc.ClientConn, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.1:0: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(st, opts).Serve(ctx, l) }()
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(1<<30))) // 10,000 services take more than the default 4 MiB
	if err != nil {
		t.Fatalf("dial xDS server %s: %v", l.Addr(), err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve returned %v after its context ended, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return within 5s of its context ending")
		}
	})
	return conn, logs
}

// client is a minimal ADS client: it subscribes to clusters and listeners, follows them to the
// load assignments and routes they name, ACKs every response and keeps what it was sent.
type client struct {
	mu       sync.Mutex
	res      resourceSet
	versions map[string]string
	err      error // why the stream ended, if not by the test's end
	updated  chan struct{}
	// delta clients hear only of types that changed, so only the latest response carries the
	// store's new version; state-of-the-world clients get every type at every version.
	delta bool
}

func newClient(delta bool) *client {
	c := &client{res: resourceSet{}, versions: map[string]string{}, updated: make(chan struct{}, 1), delta: delta}
	for _, typ := range xdsTypes {
		c.res[typ] = map[string]proto.Message{}
	}
	return c
}

// update applies one response under the lock and wakes waiters.
func (c *client) update(f func()) {
	c.mu.Lock()
	f()
	c.mu.Unlock()
	select {
	case c.updated <- struct{}{}:
	default:
	}
}

// resources returns a copy of what the client holds.
func (c *client) resources() resourceSet {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := resourceSet{}
	for typ, rs := range c.res {
		out[typ] = maps.Clone(rs)
	}
	return out
}

func (c *client) fail(err error) {
	if errors.Is(err, context.Canceled) || grpcstatus.Code(err) == codes.Canceled {
		return
	}
	c.update(func() { c.err = err })
}

// waitFor waits until the client holds exactly want at the store's version.
func (c *client) waitFor(t *testing.T, version uint64, want []string) {
	t.Helper()
	deadline := time.After(propagation)
	for {
		c.mu.Lock()
		got, versions, err := summary(c.res), maps.Clone(c.versions), c.err
		refErr := checkReferences(c.res)
		c.mu.Unlock()
		if err != nil {
			t.Fatalf("xDS stream failed: %v", err)
		}
		atVersion, newest := true, uint64(0)
		for _, typ := range xdsTypes {
			v, _ := strconv.ParseUint(versions[typ], 10, 64)
			atVersion, newest = atVersion && v == version, max(newest, v)
		}
		// A type's version is the store version that last changed it: the client is at
		// version once one type is, and it holds what is wanted.
		atVersion = newest == version
		want = slices.Sorted(slices.Values(want))
		if atVersion && slices.Equal(got, want) {
			if refErr != nil {
				t.Fatalf("client holds an inconsistent configuration at version %d: %v", version, refErr)
			}
			return
		}
		select {
		case <-c.updated:
		case <-deadline:
			t.Fatalf("after %v the client holds versions %v, want %d; resources differ:%s", propagation, versions, version, diffLines(got, want))
		}
	}
}

// dependencies returns the load assignments the clusters and the routes the listeners name.
func dependencies(typ string, rs map[string]proto.Message) (string, []string) {
	var names []string
	switch typ {
	case resourcev3.ClusterType:
		for _, m := range rs {
			names = append(names, m.(*clusterv3.Cluster).GetEdsClusterConfig().GetServiceName())
		}
		typ = resourcev3.EndpointType
	case resourcev3.ListenerType:
		for _, m := range rs {
			for _, ch := range m.(*listenerv3.Listener).GetFilterChains() {
				for _, f := range ch.GetFilters() {
					hcm := &hcmv3.HttpConnectionManager{}
					if f.GetTypedConfig().MessageIs(hcm) && f.GetTypedConfig().UnmarshalTo(hcm) == nil {
						names = append(names, hcm.GetRds().GetRouteConfigName())
					}
				}
			}
		}
		typ = resourcev3.RouteType
	default:
		return "", nil
	}
	slices.Sort(names)
	return typ, slices.Compact(names)
}

var node = &corev3.Node{Id: "n1"}

// runSotW opens a state-of-the-world ADS stream.
func (c *client) runSotW(t *testing.T, conn *grpc.ClientConn) func(*discoverygrpc.DiscoveryRequest) error {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("open ADS stream: %v", err)
	}
	var sendMu sync.Mutex
	send := func(r *discoverygrpc.DiscoveryRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		r.Node = node
		return stream.Send(r)
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := send(&discoverygrpc.DiscoveryRequest{TypeUrl: typ}); err != nil {
			t.Fatalf("request %s: %v", typ, err)
		}
	}
	go func() {
		subscribed := map[string][]string{}
		last := map[string]*discoverygrpc.DiscoveryResponse{}
		for {
			resp, err := stream.Recv()
			if err != nil {
				c.fail(err)
				return
			}
			typ := resp.GetTypeUrl()
			got := map[string]proto.Message{}
			for _, a := range resp.GetResources() {
				name, m, err := decode(a)
				if err != nil {
					c.fail(fmt.Errorf("%s version %s: %w", typ, resp.GetVersionInfo(), err))
					return
				}
				got[name] = m
			}
			last[typ] = resp
			c.update(func() { c.res[typ], c.versions[typ] = got, resp.GetVersionInfo() })
			ack := &discoverygrpc.DiscoveryRequest{TypeUrl: typ, VersionInfo: resp.GetVersionInfo(),
				ResponseNonce: resp.GetNonce(), ResourceNames: subscribed[typ]}
			if err := send(ack); err != nil {
				c.fail(err)
				return
			}
			// A new set of clusters or listeners changes which assignments or routes to ask for.
			if dep, names := dependencies(typ, got); dep != "" && !slices.Equal(names, subscribed[dep]) {
				subscribed[dep] = names
				err := send(&discoverygrpc.DiscoveryRequest{TypeUrl: dep, ResourceNames: names,
					VersionInfo: last[dep].GetVersionInfo(), ResponseNonce: last[dep].GetNonce()})
				if err != nil {
					c.fail(err)
					return
				}
			}
		}
	}()
	return send
}

// runDelta opens an incremental ADS stream.
func (c *client) runDelta(t *testing.T, conn *grpc.ClientConn) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("open delta ADS stream: %v", err)
	}
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			t.Fatalf("request %s: %v", typ, err)
		}
	}
	go func() {
		subscribed := map[string][]string{}
		for {
			resp, err := stream.Recv()
			if err != nil {
				c.fail(err)
				return
			}
			typ := resp.GetTypeUrl()
			got := map[string]proto.Message{}
			for _, r := range resp.GetResources() {
				name, m, err := decode(r.GetResource())
				if err == nil && name != r.GetName() {
					err = fmt.Errorf("resource %s sent as %s", name, r.GetName())
				}
				if err != nil {
					c.fail(fmt.Errorf("%s version %s: %w", typ, resp.GetSystemVersionInfo(), err))
					return
				}
				got[name] = m
			}
			var current map[string]proto.Message
			c.update(func() {
				maps.Copy(c.res[typ], got)
				for _, name := range resp.GetRemovedResources() {
					delete(c.res[typ], name)
				}
				c.versions[typ] = resp.GetSystemVersionInfo()
				current = maps.Clone(c.res[typ])
			})
			if err := stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: typ, ResponseNonce: resp.GetNonce()}); err != nil {
				c.fail(err)
				return
			}
			dep, names := dependencies(typ, current)
			if dep == "" {
				continue
			}
			var add, drop []string
			for _, n := range names {
				if !slices.Contains(subscribed[dep], n) {
					add = append(add, n)
				}
			}
			for _, n := range subscribed[dep] {
				if !slices.Contains(names, n) {
					drop = append(drop, n)
				}
			}
			if len(add)+len(drop) == 0 {
				continue
			}
			subscribed[dep] = names
			// Unsubscribed resources are forgotten by the client: the protocol sends no removal.
			c.update(func() {
				for _, n := range drop {
					delete(c.res[dep], n)
				}
			})
			err = stream.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: dep, ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: drop})
			if err != nil {
				c.fail(err)
				return
			}
		}
	}()
}

// decode unpacks one resource and names it as the cache does.
func decode(a *anypb.Any) (string, proto.Message, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", nil, fmt.Errorf("decode %s: %w", a.GetTypeUrl(), err)
	}
	return cachev3.GetResourceName(m), m, nil
}

func TestADSServesTheStoreAndFollowsItsChanges(t *testing.T) {
	st := fixture(t)
	conn, logs := serve(t, st, Options{})
	c := newClient(false)
	send := c.runSotW(t, conn)
	first := st.Snapshot().Version
	c.waitFor(t, first, fixtureWant)

	web1 := "endpoint " + webCluster + " zone=n1 p0 lw=%d 10.244.1.2:8080/TCP+[fd00:10:244:1::2]:8080/TCP %s w=1"
	web3 := "endpoint " + webCluster + " zone=n1 p0 lw=2 10.244.1.3:8080/TCP+[fd00:10:244:1::3]:8080/TCP HEALTHY w=1"
	steps := []struct {
		name        string
		change      func()
		remove, add []string
	}{
		{"add a pod", func() { st.UpsertPod(webPod("web-3", "n1", "10.244.1.3", "fd00:10:244:1::3", true)) },
			[]string{fmt.Sprintf(web1, 1, "HEALTHY")}, []string{fmt.Sprintf(web1, 2, "HEALTHY"), web3}},
		{"mark a pod not ready", func() { st.UpsertPod(webPod("web-1", "n1", "10.244.1.2", "fd00:10:244:1::2", false)) },
			[]string{fmt.Sprintf(web1, 2, "HEALTHY")}, []string{fmt.Sprintf(web1, 2, "UNHEALTHY")}},
		{"delete a service", func() { st.DeleteService("data", "db") },
			slices.DeleteFunc(slices.Clone(fixtureWant), func(l string) bool { return !strings.Contains(l, dbCluster) }), nil},
	}
	want := slices.Clone(fixtureWant)
	for _, step := range steps {
		want = slices.DeleteFunc(want, func(l string) bool { return slices.Contains(step.remove, l) })
		want = append(want, step.add...)
		slices.Sort(want)
		start := time.Now()
		step.change()
		c.waitFor(t, st.Snapshot().Version, want)
		t.Logf("%s: client at version %d after %v", step.name, st.Snapshot().Version, time.Since(start))
	}

	for v := first; v <= st.Snapshot().Version; v++ {
		if !strings.Contains(logs.String(), fmt.Sprintf("msg=\"xDS snapshot published\" component=xds version=%d ", v)) {
			t.Errorf("no log of published version %d in:\n%s", v, logs)
		}
	}

	// A rejected response must be logged with the node and the client's reason.
	if err := send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.ListenerType,
		ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "listener 0.0.0.0_80 refused by test"}}); err != nil {
		t.Fatalf("send NACK: %v", err)
	}
	wantLog := `msg="xDS response rejected" component=xds node=n1`
	for deadline := time.Now().Add(propagation); !strings.Contains(logs.String(), wantLog); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("NACK not logged as %q within %v; logs:\n%s", wantLog, propagation, logs)
		}
	}
	if !strings.Contains(logs.String(), `err="listener 0.0.0.0_80 refused by test"`) {
		t.Errorf("NACK log does not carry the client's reason:\n%s", logs)
	}
}

func TestDeltaADSServesTheSameResources(t *testing.T) {
	st := fixture(t)
	conn, _ := serve(t, st, Options{Policy: model.RoundRobin})
	sotw, delta := newClient(false), newClient(true)
	sotw.runSotW(t, conn)
	delta.runDelta(t, conn)
	want := slices.Clone(fixtureWant)
	for i, l := range want {
		want[i] = strings.ReplaceAll(l, " RANDOM ", " ROUND_ROBIN ")
	}
	version := st.Snapshot().Version
	sotw.waitFor(t, version, want)
	delta.waitFor(t, version, want)
	sotwRes, deltaRes := sotw.resources(), delta.resources()
	for _, typ := range xdsTypes {
		for name, m := range sotwRes[typ] {
			if !proto.Equal(m, deltaRes[typ][name]) {
				t.Errorf("%s %s differs between state-of-the-world and delta:\n%v\n%v", typ, name, m, deltaRes[typ][name])
			}
		}
	}

	// Deleting the HTTP service removes its cluster and listeners and unsubscribes its
	// assignment and route; adding a pod updates only the other assignment.
	st.DeleteService("default", "web")
	st.UpsertPod(services.Pod{Namespace: "data", Name: "db-2", Node: "n1", IPs: addrs("10.244.1.9"),
		Labels: map[string]string{"app": "db"}, Ready: true})
	delta.waitFor(t, st.Snapshot().Version, []string{
		"cluster PassthroughCluster ORIGINAL_DST CLUSTER_PROVIDED eds= ads=false",
		"cluster " + dbCluster + " EDS ROUND_ROBIN eds=" + dbCluster + " ads=true",
		"endpoint " + dbCluster + " zone=n1 p0 lw=1 10.244.1.9:5433/TCP HEALTHY w=1",
		"endpoint " + dbCluster + " zone=n2 p0 lw=1 10.244.2.3:5433/TCP HEALTHY w=1",
		"listener 10.96.0.10_5432 10.96.0.10:5432/TCP bind=false OUTBOUND  -> envoy.filters.network.tcp_proxy tcp " + dbCluster,
	})
}

// sotwStream is what every per-type discovery stream has in common.
type sotwStream interface {
	Send(*discoverygrpc.DiscoveryRequest) error
	Recv() (*discoverygrpc.DiscoveryResponse, error)
}

func TestPerTypeDiscoveryServices(t *testing.T) {
	st := fixture(t)
	conn, _ := serve(t, st, Options{})
	tests := []struct {
		typ   string
		open  func(context.Context) (sotwStream, error)
		names []string // requested, all of them (ADS mode answers no subset); none for wildcard
		want  []string
	}{
		{resourcev3.ClusterType, func(ctx context.Context) (sotwStream, error) {
			return clusterservice.NewClusterDiscoveryServiceClient(conn).StreamClusters(ctx)
		}, nil, []string{"PassthroughCluster", dbCluster, webCluster}},
		{resourcev3.EndpointType, func(ctx context.Context) (sotwStream, error) {
			return endpointservice.NewEndpointDiscoveryServiceClient(conn).StreamEndpoints(ctx)
		}, []string{dbCluster, webCluster}, []string{dbCluster, webCluster}},
		{resourcev3.ListenerType, func(ctx context.Context) (sotwStream, error) {
			return listenerservice.NewListenerDiscoveryServiceClient(conn).StreamListeners(ctx)
		}, nil, []string{"0.0.0.0_80", "10.96.0.10_5432", "[::]_80"}},
		{resourcev3.RouteType, func(ctx context.Context) (sotwStream, error) {
			return routeservice.NewRouteDiscoveryServiceClient(conn).StreamRoutes(ctx)
		}, []string{"80"}, []string{"80"}},
	}
	for _, tt := range tests {
		t.Run(tt.typ[strings.LastIndex(tt.typ, ".")+1:], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), propagation)
			defer cancel()
			stream, err := tt.open(ctx)
			if err != nil {
				t.Fatalf("open %s stream: %v", tt.typ, err)
			}
			if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: tt.typ, ResourceNames: tt.names}); err != nil {
				t.Fatalf("request %s: %v", tt.typ, err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("receive %s: %v", tt.typ, err)
			}
			var got []string
			for _, a := range resp.GetResources() {
				name, _, err := decode(a)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, name)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) || resp.GetTypeUrl() != tt.typ || resp.GetVersionInfo() != strconv.FormatUint(st.Snapshot().Version, 10) {
				t.Errorf("got %s version %s %v, want %s version %d %v", resp.GetTypeUrl(), resp.GetVersionInfo(), got, tt.typ, st.Snapshot().Version, tt.want)
			}
		})
	}
}

func TestServeRefuses(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(*Server) // runs before the Serve under test
		opts    Options
		want    string
	}{
		{"a policy xDS cannot express", nil, Options{Policy: model.Policy(7)}, "policy(7)"},
		{"a second Serve", func(s *Server) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("listen on 127.0.0.1:0: %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := s.Serve(ctx, l); err != nil {
				t.Fatalf("first Serve: %v", err)
			}
		}, Options{}, "already served"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(fixture(t), tt.opts)
			if tt.prepare != nil {
				tt.prepare(s)
			}
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatalf("listen on 127.0.0.1:0: %v", err)
			}
			err = s.Serve(context.Background(), l)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), l.Addr().String()) {
				t.Fatalf("Serve: err = %v, want one naming %s and %q", err, l.Addr(), tt.want)
			}
			if c, err := net.Dial("tcp", l.Addr().String()); err == nil {
				c.Close()
				t.Errorf("listener %s still accepts after the refused Serve; it must be closed", l.Addr())
			}
		})
	}
}
