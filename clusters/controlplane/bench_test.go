package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/onehop-mesh/onehop/clusters/services"
)

// scaleStore holds n TCP services of 10 endpoints each, as `onehop bench-scale` does.
func scaleStore(tb testing.TB, n int) (*services.Store, []services.Pod) {
	tb.Helper()
	st := services.New(netip.MustParsePrefix("10.96.0.0/16"))
	ip := netip.MustParseAddr("10.128.0.0")
	var first []services.Pod // the first pod of each service
	for i := range n {
		app := map[string]string{"app": fmt.Sprintf("svc-%d", i)}
		if _, err := st.UpsertService(services.Service{Namespace: "scale", Name: fmt.Sprintf("svc-%d", i), Selector: app,
			Ports: []services.Port{{Name: "tcp", Port: 80, TargetPort: 8080, Protocol: "TCP"}}}); err != nil {
			tb.Fatalf("UpsertService(scale/svc-%d): %v", i, err)
		}
		for j := range 10 {
			ip = ip.Next()
			p := services.Pod{Namespace: "scale", Name: fmt.Sprintf("svc-%d-%d", i, j), Node: "n1", IPs: []netip.Addr{ip}, Labels: app, Ready: true}
			st.UpsertPod(p)
			if j == 0 {
				first = append(first, p)
			}
		}
	}
	return st, first
}

// adsStream is what the benchmark needs of either ADS stream: it subscribes to everything and
// returns once the client holds every load assignment; wait returns once the client has
// received the load assignment of cluster at store version v.
type adsStream interface {
	wait(tb testing.TB, cluster string, v uint64)
}

type deltaStream struct {
	s discoverygrpc.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
}

func openDelta(tb testing.TB, conn *grpc.ClientConn, n int) *deltaStream {
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		tb.Fatalf("open delta ADS stream: %v", err)
	}
	if err := s.Send(&discoverygrpc.DeltaDiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		tb.Fatal(err)
	}
	for eds := 0; eds < n; {
		resp, err := s.Recv()
		if err != nil {
			tb.Fatal(err)
		}
		if err := s.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			tb.Fatal(err)
		}
		switch resp.GetTypeUrl() {
		case resourcev3.ClusterType:
			var names []string
			for _, r := range resp.GetResources() {
				names = append(names, r.GetName())
			}
			if err := s.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names}); err != nil {
				tb.Fatal(err)
			}
		case resourcev3.EndpointType:
			eds += len(resp.GetResources())
		}
	}
	return &deltaStream{s}
}

func (d *deltaStream) wait(tb testing.TB, cluster string, _ uint64) {
	for {
		resp, err := d.s.Recv()
		if err != nil {
			tb.Fatal(err)
		}
		if err := d.s.Send(&discoverygrpc.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			tb.Fatal(err)
		}
		for _, r := range resp.GetResources() {
			if r.GetName() == cluster {
				return
			}
		}
	}
}

type sotwStreamClient struct {
	s     discoverygrpc.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	names []string
}

func openSotW(tb testing.TB, conn *grpc.ClientConn, n int) adsStream {
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	s, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		tb.Fatalf("open ADS stream: %v", err)
	}
	if err := s.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType}); err != nil {
		tb.Fatal(err)
	}
	c := &sotwStreamClient{s: s}
	for {
		resp := c.recv(tb)
		if resp.GetTypeUrl() == resourcev3.ClusterType && c.names == nil {
			for _, a := range resp.GetResources() {
				name, _, err := decode(a)
				if err != nil {
					tb.Fatal(err)
				}
				c.names = append(c.names, name)
			}
			if err := s.Send(&discoverygrpc.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: c.names}); err != nil {
				tb.Fatal(err)
			}
		}
		if resp.GetTypeUrl() == resourcev3.EndpointType && len(resp.GetResources()) == n {
			return c
		}
	}
}

// recv receives and ACKs one response.
func (c *sotwStreamClient) recv(tb testing.TB) *discoverygrpc.DiscoveryResponse {
	resp, err := c.s.Recv()
	if err != nil {
		tb.Fatal(err)
	}
	ack := &discoverygrpc.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
	if resp.GetTypeUrl() == resourcev3.EndpointType {
		ack.ResourceNames = c.names
	}
	if err := c.s.Send(ack); err != nil {
		tb.Fatal(err)
	}
	return resp
}

func (c *sotwStreamClient) wait(tb testing.TB, _ string, v uint64) {
	for {
		resp := c.recv(tb)
		if resp.GetTypeUrl() == resourcev3.EndpointType && resp.GetVersionInfo() == fmt.Sprint(v) {
			return
		}
	}
}

// BenchmarkPublishEndpointChange times one endpoint's readiness change in a store of 10,000
// services, from the store change to the client holding the new load assignment, over both ADS
// protocols.
func BenchmarkPublishEndpointChange(b *testing.B) {
	const n = 10000
	for _, tc := range []struct {
		name string
		open func(testing.TB, *grpc.ClientConn, int) adsStream
	}{
		{"delta", func(tb testing.TB, conn *grpc.ClientConn, n int) adsStream { return openDelta(tb, conn, n) }},
		{"sotw", openSotW},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st, pods := scaleStore(b, n)
			conn, _ := serve(b, st, Options{Log: slog.New(slog.DiscardHandler)})
			start := time.Now()
			c := tc.open(b, conn, n)
			b.Logf("initial %d load assignments after %v", n, time.Since(start))
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				p := pods[i%n]
				p.Ready = i/n%2 == 1 // every iteration changes one endpoint: the first pass marks them not ready
				st.UpsertPod(p)
				c.wait(b, ClusterName(p.Namespace, "svc-"+fmt.Sprint(i%n), 80), st.Version())
			}
		})
	}
}

// TestOneEndpointChangeSendsOneAssignment checks that a delta client hears of a one-endpoint
// change in a large store as exactly one load assignment, and of nothing else.
func TestOneEndpointChangeSendsOneAssignment(t *testing.T) {
	const n = 1000
	st, pods := scaleStore(t, n)
	conn, _ := serve(t, st, Options{Log: slog.New(slog.DiscardHandler)})
	d := openDelta(t, conn, n)

	p := pods[n/2]
	p.Ready = false
	st.UpsertPod(p)
	cluster := ClusterName(p.Namespace, p.Name[:len(p.Name)-2], 80)
	got := make(chan *discoverygrpc.DeltaDiscoveryResponse, 1)
	go func() {
		resp, err := d.s.Recv()
		if err != nil {
			t.Errorf("receive the change: %v", err)
			close(got)
			return
		}
		got <- resp
	}()
	var resp *discoverygrpc.DeltaDiscoveryResponse
	select {
	case resp = <-got:
	case <-time.After(propagation):
		t.Fatalf("no delta response within %v of the change", propagation)
	}
	if resp == nil {
		return
	}
	if resp.GetTypeUrl() != resourcev3.EndpointType || len(resp.GetResources()) != 1 || len(resp.GetRemovedResources()) != 0 ||
		resp.GetResources()[0].GetName() != cluster {
		var names []string
		for _, r := range resp.GetResources() {
			names = append(names, r.GetName())
		}
		t.Fatalf("first response after the change: %s with %d resources %.200v, removed %v; want only the load assignment %s",
			resp.GetTypeUrl(), len(names), names, resp.GetRemovedResources(), cluster)
	}
	cla := &endpointv3.ClusterLoadAssignment{}
	if err := resp.GetResources()[0].GetResource().UnmarshalTo(cla); err != nil {
		t.Fatal(err)
	}
	unhealthy := 0
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			if e.GetHealthStatus() != corev3.HealthStatus_HEALTHY {
				unhealthy++
			}
		}
	}
	if unhealthy != 1 || len(cla.GetEndpoints()[0].GetLbEndpoints()) != 10 {
		t.Errorf("load assignment of %s has %d unhealthy endpoints, want 1 of 10:\n%v", cluster, unhealthy, prototext.Format(cla))
	}
}
