package xds

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// FuzzTranslate feeds Translate resources decoded from fuzzed bytes (a listener, a route,
// two clusters, two endpoint assignments) and checks it never panics and that whatever it
// accepts passes model validation.
func FuzzTranslate(f *testing.F) {
	m := func(msg proto.Message) []byte {
		b, err := proto.Marshal(msg)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	staticC := &clusterv3.Cluster{Name: "v2", LbPolicy: clusterv3.Cluster_LEAST_REQUEST,
		LoadAssignment: cla("v2", ep{addr: "10.1.2.1:80"}, ep{addr: "[fd00::2]:80", weight: w(7)})}
	seeds := []struct {
		l       *listenerv3.Listener
		r       *routev3.RouteConfiguration
		c1      *clusterv3.Cluster
		c2      *clusterv3.Cluster
		e1      *endpointv3.ClusterLoadAssignment
		e2      *endpointv3.ClusterLoadAssignment
		await   bool
		settled bool
	}{
		{l: listener("web", "10.96.0.10", 80, chain("", tcpProxy("v1"))), c1: edsCluster("v1", rr),
			e1: cla("v1", ep{addr: "10.1.1.1:80"}, ep{addr: "10.1.1.2:80", weight: w(3)})},
		{l: listener("canary", "10.96.0.20", 80, chain("", weightedTCP("v1", 90, "v2", 10))),
			c1: edsCluster("v1", rr), c2: edsCluster("v2", rnd),
			e1: cla("v1", ep{addr: "10.1.1.1:80"}, ep{addr: "10.1.1.2:80", prio: 1}),
			e2: cla("v2", ep{addr: "10.1.2.1:80", health: corev3.HealthStatus_DRAINING}, ep{addr: "10.1.2.2:80"})},
		{l: listener("api", "10.96.0.11", 80, chain("", hcmRDS("80"))), r: routeTo("80", "v1"),
			c1: edsCluster("v1", clusterv3.Cluster_RANDOM), e1: cla("v1", ep{addr: "10.1.1.1:9090"})},
		{l: listener("0.0.0.0_80", "0.0.0.0", 80,
			chain("a", tcpProxy("v1"), "10.96.0.1/32", "10.96.0.2/32"), chain("b", hcmInline(routeTo("in", "v2")), "fd00::1/128"),
			chain("pass", tcpProxy("PassthroughCluster"))),
			c1: edsCluster("v1", rr), c2: staticC, e1: cla("v1", ep{addr: "10.1.1.1:80"})},
		{l: listener("web", "10.96.0.10", 80, chain("", tcpProxy("v1"))), c1: edsCluster("v1", rr), await: true},
		{l: listener("web", "10.96.0.10", 80, chain("", tcpProxy("gone"))), settled: true},
	}
	for _, s := range seeds {
		f.Add(m(s.l), m(s.r), m(s.c1), m(s.c2), m(s.e1), m(s.e2), s.await, s.settled)
	}
	f.Fuzz(func(t *testing.T, lb, rb, c1b, c2b, e1b, e2b []byte, await, settled bool) {
		s := state()
		s.AwaitingClusters = await
		var l listenerv3.Listener
		if proto.Unmarshal(lb, &l) == nil {
			s.Listeners[l.GetName()] = NewListener(&l)
			if settled { // accepted before: its missing clusters are pending, not errors
				s.AcceptedListeners = map[string]*Listener{l.GetName(): NewListener(proto.Clone(&l).(*listenerv3.Listener))}
			}
		}
		var r routev3.RouteConfiguration
		if proto.Unmarshal(rb, &r) == nil {
			s.Routes[r.GetName()] = &r
		}
		for _, b := range [][]byte{c1b, c2b} {
			var c clusterv3.Cluster
			if proto.Unmarshal(b, &c) == nil {
				s.Clusters[c.GetName()] = NewCluster(&c)
			}
		}
		for _, b := range [][]byte{e1b, e2b} {
			var e endpointv3.ClusterLoadAssignment
			if proto.Unmarshal(b, &e) == nil {
				s.Endpoints[e.GetClusterName()] = NewAssignment(&e)
			}
		}
		cfg, err := Translate(&s)
		if err != nil {
			return
		}
		for k, svc := range cfg.Services {
			if svc.Key != k {
				t.Fatalf("service %s stored under key %s", svc.Key, k)
			}
			if err := svc.Validate(); err != nil {
				t.Fatalf("Translate accepted an invalid service: %v", err)
			}
			for _, eps := range svc.Priorities {
				if len(model.Slots(eps)) < len(eps) {
					t.Fatalf("service %s: fewer slots than endpoints", k)
				}
			}
		}
	})
}
