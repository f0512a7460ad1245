package xds

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

var (
	rr  = clusterv3.Cluster_ROUND_ROBIN
	rnd = clusterv3.Cluster_RANDOM
)

func w(n uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(n) }

func TestTranslate(t *testing.T) {
	webL := listener("web", "10.96.0.10", 80, chain("", tcpProxy("web")))
	webC := edsCluster("web", rr)
	webE := cla("web", ep{addr: "10.1.0.1:8080"}, ep{addr: "10.1.0.2:8080", weight: w(3)})
	webWant := svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 1), mep("10.1.0.2:8080", 3)})

	tests := []struct {
		name    string
		state   State
		want    model.Config
		wantErr string // fragment of the error; empty: must succeed
	}{
		{
			name:  "tcp_proxy listener on a VIP, EDS cluster, endpoint weights",
			state: state(webL, webC, webE),
			want:  config(webWant),
		},
		{
			name: "EDS service_name differs from the cluster name",
			state: func() State {
				c := edsCluster("outbound|80||web", rr)
				c.EdsClusterConfig.ServiceName = "web-eds"
				return state(listener("web", "10.96.0.10", 80, chain("", tcpProxy("outbound|80||web"))), c,
					cla("web-eds", ep{addr: "10.1.0.1:8080"}))
			}(),
			want: config(svc("10.96.0.10:80", "outbound|80||web", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 1)})),
		},
		{
			name: "Istio-style port listeners: a service per /32 and /128 chain, passthrough and CIDR chains ignored",
			state: state(
				listener("0.0.0.0_80", "0.0.0.0", 80,
					chain("a", tcpProxy("a"), "10.96.0.1/32"),
					chain("b", tcpProxy("b"), "10.96.0.2/32", "10.96.0.3/32"),
					chain("cidr", tcpProxy("PassthroughCluster"), "10.0.0.0/8"),
					chain("passthrough", tcpProxy("PassthroughCluster"))),
				listener("[::]_80", "::", 80, chain("a6", tcpProxy("a6"), "fd00::1/128")),
				edsCluster("a", rr), edsCluster("b", rnd), edsCluster("a6", rr),
				cla("a", ep{addr: "10.1.0.1:80"}), cla("b", ep{addr: "10.1.0.2:80"}), cla("a6", ep{addr: "[fd01::1]:80"})),
			want: config(
				svc("10.96.0.1:80", "a", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:80", 1)}),
				svc("10.96.0.2:80", "b", model.Random, []model.Endpoint{mep("10.1.0.2:80", 1)}),
				svc("10.96.0.3:80", "b", model.Random, []model.Endpoint{mep("10.1.0.2:80", 1)}),
				svc("[fd00::1]:80", "a6", model.RoundRobin, []model.Endpoint{mep("[fd01::1]:80", 1)})),
		},
		{
			name: "default filter chain serves a VIP listener",
			state: state(&listenerv3.Listener{Name: "web", Address: socket("10.96.0.10", 80),
				DefaultFilterChain: chain("default", tcpProxy("web"))}, webC, webE),
			want: config(webWant),
		},
		{
			name:  "http_connection_manager with RDS: first virtual host's catch-all route",
			state: state(listener("web", "10.96.0.10", 80, chain("", hcmRDS("80"))), routeTo("80", "web"), webC, webE),
			want:  config(webWant),
		},
		{
			name:  "http_connection_manager with an inline route configuration",
			state: state(listener("web", "10.96.0.10", 80, chain("", hcmInline(routeTo("inline", "web")))), webC, webE),
			want:  config(webWant),
		},
		{
			name: "weighted clusters 90/10 merge into one service with effective weights",
			state: state(listener("canary", "10.96.0.20", 80, chain("", weightedTCP("v1", 90, "v2", 10))),
				edsCluster("v1", rr), edsCluster("v2", rr),
				cla("v1", ep{addr: "10.1.1.1:80"}, ep{addr: "10.1.1.2:80"}, ep{addr: "10.1.1.3:80"}),
				cla("v2", ep{addr: "10.1.2.1:80"})),
			// 90% over three endpoints, 10% on one: 30:30:30:10, reduced.
			want: config(svc("10.96.0.20:80", "canary", model.RoundRobin,
				[]model.Endpoint{mep("10.1.1.1:80", 3), mep("10.1.1.2:80", 3), mep("10.1.1.3:80", 3), mep("10.1.2.1:80", 1)})),
		},
		{
			name: "weighted route clusters with different lb policies use random",
			state: state(listener("canary", "10.96.0.20", 80, chain("", hcmInline(&routev3.RouteConfiguration{
				Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "all", Routes: []*routev3.Route{{
					Match: prefixMatch(""),
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{
						WeightedClusters: &routev3.WeightedCluster{Clusters: []*routev3.WeightedCluster_ClusterWeight{
							{Name: "v1", Weight: w(3)}, {Name: "v2", Weight: w(1)},
						}},
					}}},
				}}}}}))),
				edsCluster("v1", rr), edsCluster("v2", rnd),
				cla("v1", ep{addr: "10.1.1.1:80", weight: w(2)}, ep{addr: "10.1.1.2:80", weight: w(1)}),
				cla("v2", ep{addr: "10.1.2.1:80"}, ep{addr: "10.1.2.2:80"})),
			// v1 gets 3/4 split 2:1, v2 1/4 split 1:1: 6/8, 2/8 and 1/8, 1/8 of connections.
			want: config(svc("10.96.0.20:80", "canary", model.Random,
				[]model.Endpoint{mep("10.1.1.1:80", 4), mep("10.1.1.2:80", 2), mep("10.1.2.1:80", 1), mep("10.1.2.2:80", 1)})),
		},
		{
			name: "priority levels in order, gaps compacted",
			state: state(webL, webC, cla("web",
				ep{addr: "10.1.0.3:8080", prio: 3}, ep{addr: "10.1.0.1:8080", prio: 0}, ep{addr: "10.1.0.2:8080", prio: 1},
				ep{addr: "10.1.0.4:8080", prio: 0})),
			want: config(svc("10.96.0.10:80", "web", model.RoundRobin,
				[]model.Endpoint{mep("10.1.0.1:8080", 1), mep("10.1.0.4:8080", 1)},
				[]model.Endpoint{mep("10.1.0.2:8080", 1)},
				[]model.Endpoint{mep("10.1.0.3:8080", 1)})),
		},
		{
			name: "health: only HEALTHY and UNKNOWN endpoints kept; an all-unhealthy level is dropped",
			state: state(webL, webC, cla("web",
				ep{addr: "10.1.0.1:8080", health: corev3.HealthStatus_HEALTHY},
				ep{addr: "10.1.0.2:8080", health: corev3.HealthStatus_UNKNOWN},
				ep{addr: "10.1.0.3:8080", health: corev3.HealthStatus_UNHEALTHY},
				ep{addr: "10.1.0.4:8080", health: corev3.HealthStatus_DRAINING},
				ep{addr: "10.1.0.5:8080", health: corev3.HealthStatus_TIMEOUT},
				ep{addr: "10.1.0.6:8080", health: corev3.HealthStatus_DEGRADED},
				ep{addr: "10.1.0.7:8080", prio: 1, health: corev3.HealthStatus_UNHEALTHY},
				ep{addr: "10.1.0.8:8080", prio: 2})),
			want: config(svc("10.96.0.10:80", "web", model.RoundRobin,
				[]model.Endpoint{mep("10.1.0.1:8080", 1), mep("10.1.0.2:8080", 1)},
				[]model.Endpoint{mep("10.1.0.8:8080", 1)})),
		},
		{
			name: "a service whose endpoints are all unhealthy is programmed empty (connect()s refused)",
			state: state(webL, webC, cla("web",
				ep{addr: "10.1.0.1:8080", health: corev3.HealthStatus_UNHEALTHY})),
			want: config(svc("10.96.0.10:80", "web", model.RoundRobin)),
		},
		{
			name:  "a cluster with no endpoints at all (scaled to zero, or istiod withholding them) is programmed empty",
			state: state(webL, webC, cla("web")),
			want:  config(svc("10.96.0.10:80", "web", model.RoundRobin)),
		},
		{
			name: "dual-stack cluster: each VIP gets the endpoints of its family",
			state: state(listener("web", "10.96.0.10", 80, chain("", tcpProxy("web"))), listener("web6", "fd00::10", 80, chain("", tcpProxy("web"))),
				webC, cla("web", ep{addr: "10.1.0.1:8080"}, ep{addr: "[fd01::1]:8080"}, ep{addr: "[fd01::2]:8080", prio: 1})),
			want: config(svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 1)}),
				svc("[fd00::10]:80", "web", model.RoundRobin, []model.Endpoint{mep("[fd01::1]:8080", 1)}, []model.Endpoint{mep("[fd01::2]:8080", 1)})),
		},
		{
			name: "the same address twice adds up its weight",
			state: state(webL, webC, cla("web", ep{addr: "10.1.0.1:8080", weight: w(2)}, ep{addr: "10.1.0.2:8080"},
				ep{addr: "10.1.0.1:8080"})),
			want: config(svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 3), mep("10.1.0.2:8080", 1)})),
		},
		{
			name:  "warming: a cluster without its EDS yet is left out",
			state: state(webL, webC),
			want:  config(),
		},
		{
			name: "warming: an already programmed service keeps its previous definition",
			state: func() State {
				s := state(listener("web", "10.96.0.10", 80, chain("", tcpProxy("web-v2"))), edsCluster("web-v2", rr), webC, webE)
				s.Previous = config(webWant)
				return s
			}(),
			want: config(webWant),
		},
		{
			name: "warming: a route not arrived yet keeps the previous service",
			state: func() State {
				s := state(listener("web", "10.96.0.10", 80, chain("", hcmRDS("80"))), webC, webE)
				s.Previous = config(webWant)
				return s
			}(),
			want: config(webWant),
		},
		{
			name: "a cluster removed from CDS under an unchanged listener is pending, not an error",
			state: func() State {
				s := state(webL)
				s.Previous, s.AcceptedListeners = config(webWant), map[string]*Listener{"web": NewListener(webL)}
				return s
			}(),
			want: config(webWant),
		},
		{
			name: "a cluster removed from CDS under an unchanged route is pending, not an error",
			state: func() State {
				s := state(listener("web", "10.96.0.10", 80, chain("", hcmRDS("80"))), routeTo("80", "web"))
				s.Previous, s.AcceptedRoutes = config(webWant), map[string]*routev3.RouteConfiguration{"80": routeTo("80", "web")}
				return s
			}(),
			want: config(webWant),
		},
		{
			name: "listeners before the first CDS response wait for it",
			state: func() State {
				s := state(webL)
				s.AwaitingClusters = true
				return s
			}(),
			want: config(),
		},
		{
			name: "STATIC cluster with an inline load_assignment; LEAST_REQUEST is random",
			state: state(listener("web", "10.96.0.10", 80, chain("", tcpProxy("static"))), &clusterv3.Cluster{
				Name: "static", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
				LbPolicy: clusterv3.Cluster_LEAST_REQUEST, LoadAssignment: cla("static", ep{addr: "10.1.0.9:80"}),
			}),
			want: config(svc("10.96.0.10:80", "static", model.Random, []model.Endpoint{mep("10.1.0.9:80", 1)})),
		},
		{
			name: "typed load_balancing_policy: first supported one wins",
			state: func() State {
				c := edsCluster("web", rnd)
				c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
					{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "maglev", TypedConfig: mustAny(&maglevv3.Maglev{})}},
					{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "rr", TypedConfig: mustAny(&roundrobinv3.RoundRobin{})}},
				}}
				return state(webL, c, webE)
			}(),
			want: config(webWant),
		},
		{
			name: "typed least_request policy is random",
			state: func() State {
				c := edsCluster("web", rr)
				c.LoadBalancingPolicy = &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
					{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "lr", TypedConfig: mustAny(&leastrequestv3.LeastRequest{})}},
				}}
				return state(webL, c, webE)
			}(),
			want: config(svc("10.96.0.10:80", "web", model.Random, webWant.Priorities...)),
		},
		{
			name:  "unreferenced clusters are not validated",
			state: state(webL, webC, webE, edsCluster("maglev", clusterv3.Cluster_MAGLEV)),
			want:  config(webWant),
		},

		// NACKs.
		{
			name:    "unknown cluster reference",
			state:   state(listener("web", "10.96.0.10", 80, chain("c", tcpProxy("nope"))), webC, webE),
			wantErr: `listener "web" chain "c": cluster "nope" not found in CDS (unknown cluster reference)`,
		},
		{
			name: "unknown cluster in a listener changed by the update, even with a previous service",
			state: func() State {
				s := state(listener("web", "10.96.0.10", 80, chain("c", tcpProxy("nope"))), webC, webE)
				s.Previous, s.AcceptedListeners = config(webWant), map[string]*Listener{"web": NewListener(webL)}
				return s
			}(),
			wantErr: `listener "web" chain "c": cluster "nope" not found in CDS`,
		},
		{
			name:    "unknown cluster in a route",
			state:   state(listener("web", "10.96.0.10", 80, chain("", hcmRDS("80"))), routeTo("80", "nope"), webC, webE),
			wantErr: `cluster "nope" not found`,
		},
		{
			name:    "zero endpoint weight",
			state:   state(webL, webC, cla("web", ep{addr: "10.1.0.1:8080", weight: w(0)})),
			wantErr: `endpoint 10.1.0.1:8080 has weight 0`,
		},
		{
			name:    "endpoint weight over model.MaxWeight",
			state:   state(webL, webC, cla("web", ep{addr: "10.1.0.1:8080", weight: w(model.MaxWeight + 1)})),
			wantErr: fmt.Sprintf("has weight %d (zero weight or over %d)", model.MaxWeight+1, model.MaxWeight),
		},
		{
			name: "zero weighted-cluster weight",
			state: state(listener("canary", "10.96.0.20", 80, chain("", weightedTCP("v1", 90, "v2", 0))),
				edsCluster("v1", rr), edsCluster("v2", rr), cla("v1", ep{addr: "10.1.1.1:80"}), cla("v2", ep{addr: "10.1.2.1:80"})),
			wantErr: `weighted cluster "v2" has zero weight`,
		},
		{
			name: "weighted-cluster weights overflowing uint32",
			state: state(listener("canary", "10.96.0.20", 80, chain("", weightedTCP("v1", 3_000_000_000, "v2", 2_000_000_000))),
				edsCluster("v1", rr), edsCluster("v2", rr), cla("v1", ep{addr: "10.1.1.1:80"}), cla("v2", ep{addr: "10.1.2.1:80"})),
			wantErr: `weights overflow uint32`,
		},
		{
			name: "effective weights overflowing model.MaxWeight",
			state: state(listener("canary", "10.96.0.20", 80, chain("", weightedTCP("v1", 1_000_000, "v2", 1))),
				edsCluster("v1", rr), edsCluster("v2", rr),
				cla("v1", ep{addr: "10.1.1.1:80"}, ep{addr: "10.1.1.2:80"}),
				cla("v2", ep{addr: "10.1.2.1:80"}, ep{addr: "10.1.2.2:80"}, ep{addr: "10.1.2.3:80"})),
			wantErr: fmt.Sprintf("effective endpoint weights overflow the %d onehop supports", model.MaxWeight),
		},
		{
			name:    "unsupported lb_policy",
			state:   state(webL, edsCluster("web", clusterv3.Cluster_MAGLEV), webE),
			wantErr: `cluster "web": lb_policy MAGLEV not supported by onehop`,
		},
		{
			name:    "unsupported cluster type",
			state:   state(webL, &clusterv3.Cluster{Name: "web", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST}}),
			wantErr: `type ORIGINAL_DST not supported by onehop`,
		},
		{
			name:    "more than model.MaxSlots endpoints in one priority",
			state:   state(webL, webC, cla("web", manyEndpoints(model.MaxSlots+1, 0)...)),
			wantErr: fmt.Sprintf("priority 0 has more than %d endpoints", model.MaxSlots),
		},
		{
			name: "more than 4 priorities",
			state: state(webL, webC, cla("web", ep{addr: "10.1.0.1:80", prio: 0}, ep{addr: "10.1.0.2:80", prio: 1},
				ep{addr: "10.1.0.3:80", prio: 2}, ep{addr: "10.1.0.4:80", prio: 3}, ep{addr: "10.1.0.5:80", prio: 4})),
			wantErr: fmt.Sprintf("more than %d priority levels", model.MaxPriorities),
		},
		{
			name: "a resource over MaxResourceBytes encoded",
			state: func() State {
				l := listener("web", "10.96.0.10", 80, chain("", tcpProxy("web")))
				l.StatPrefix = strings.Repeat("x", MaxResourceBytes)
				return state(l, webC, webE)
			}(),
			wantErr: fmt.Sprintf(`listener "web" is %d bytes encoded, more than the %d onehop accepts`, MaxResourceBytes+155, MaxResourceBytes),
		},
		{
			name:    "more than MaxServices services",
			state:   manyServices(MaxServices + 1),
			wantErr: fmt.Sprintf("more than %d services in total", MaxServices),
		},
		{
			name:    "two listeners for the same VIP:port",
			state:   state(webL, listener("web-again", "10.96.0.10", 80, chain("", tcpProxy("web"))), webC, webE),
			wantErr: `listener "web" chain #0 and listener "web-again" chain #0 both serve 10.96.0.10:80/6`,
		},
		{
			name: "two chains for the same VIP:port",
			state: state(listener("0.0.0.0_80", "0.0.0.0", 80,
				chain("a", tcpProxy("web"), "10.96.0.10/32"), chain("b", tcpProxy("web"), "10.96.0.10/32")), webC, webE),
			wantErr: `listener "0.0.0.0_80" chain "a" and listener "0.0.0.0_80" chain "b" both serve 10.96.0.10:80/6`,
		},
		{
			name:    "non-IP endpoint address",
			state:   state(webL, webC, cla("web", ep{addr: "backend.example:80"})),
			wantErr: `endpoint address "backend.example" is not a valid IP`,
		},
		{
			name: "UDP listener",
			state: func() State {
				l := listener("dns", "10.96.0.53", 53, chain("", tcpProxy("web")))
				l.Address.GetSocketAddress().Protocol = corev3.SocketAddress_UDP
				return state(l, webC, webE)
			}(),
			wantErr: `listener "dns": UDP services are not supported by onehop`,
		},
		{
			name:    "VIP that is not a valid IP",
			state:   state(listener("web", "web.example", 80, chain("", tcpProxy("web"))), webC, webE),
			wantErr: `listener "web": address: "web.example" is not a valid IP`,
		},
		{
			name:    "listener port 0",
			state:   state(listener("web", "10.96.0.10", 0, chain("", tcpProxy("web"))), webC, webE),
			wantErr: `listener "web": port 0 is not in 1..65535`,
		},
		{
			name: "route configuration without a catch-all route",
			state: state(listener("web", "10.96.0.10", 80, chain("", hcmRDS("80"))), &routev3.RouteConfiguration{
				Name: "80", VirtualHosts: []*routev3.VirtualHost{{Name: "all", Routes: []*routev3.Route{
					{Name: "api", Match: prefixMatch("/api"), Action: toCluster("web")},
				}}},
			}, webC, webE),
			wantErr: `route_configuration "80": virtual host "all" has no catch-all route`,
		},
		{
			name: "network filter onehop cannot forward",
			state: state(listener("web", "10.96.0.10", 80, &listenerv3.FilterChain{Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.echo", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&corev3.Locality{})},
			}}}), webC, webE),
			wantErr: `listener "web" chain #0: no tcp_proxy or http_connection_manager network filter`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Translate(&tc.state)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Translate error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Translate =\n%s\nwant\n%s", dump(got), dump(tc.want))
			}
		})
	}
}

// TestWeightedSlots checks that weighted clusters give each cluster its share of the kernel's
// slot table, whatever the clusters' endpoint counts and weights.
func TestWeightedSlots(t *testing.T) {
	tests := []struct {
		w1, w2 int
		n1, n2 int // endpoints per cluster
	}{
		{90, 10, 3, 1},
		{90, 10, 1, 3},
		{90, 10, 7, 5},
		{50, 50, 2, 3},
		{99, 1, 10, 10},
		{1, 1, 400, 600},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d/%d over %d+%d endpoints", tc.w1, tc.w2, tc.n1, tc.n2), func(t *testing.T) {
			s := state(listener("canary", "10.96.0.20", 80, chain("", weightedTCP("v1", tc.w1, "v2", tc.w2))),
				edsCluster("v1", rr), edsCluster("v2", rr),
				cla("v1", manyEndpoints(tc.n1, 1)...), cla("v2", manyEndpoints(tc.n2, 2)...))
			cfg, err := Translate(&s)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			slots := model.Slots(cfg.Services[key("10.96.0.20:80")].Priorities[0])
			v2 := 0
			for _, a := range slots {
				if a.Addr().As4()[2] == 2 {
					v2++
				}
			}
			got, want := float64(v2)/float64(len(slots)), float64(tc.w2)/float64(tc.w1+tc.w2)
			// Exact when the slot table holds the exact weights, else within the rounding
			// of one slot per endpoint.
			if tol := float64(tc.n1+tc.n2) / float64(len(slots)); got < want-tol || got > want+tol {
				t.Fatalf("v2 has %d of %d slots (%.4f), want %.4f", v2, len(slots), got, want)
			}
			if len(slots) < model.MaxSlots && got != want {
				t.Fatalf("v2 has %d of %d slots (%.4f), want exactly %.4f", v2, len(slots), got, want)
			}
		})
	}
}

// manyEndpoints returns n endpoints 10.<third>.x.y:80, all at priority 0.
func manyEndpoints(n int, third byte) []ep {
	eps := make([]ep, n)
	for i := range eps {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 8), third, byte(i)})
		eps[i] = ep{addr: netip.AddrPortFrom(a, 80).String()}
	}
	return eps
}

// manyServices is n Istio-style VIPs over one cluster, in port listeners of at most 10,000
// chains' prefix ranges each (a listener stays under MaxResourceBytes).
func manyServices(n int) State {
	s := state(edsCluster("web", rr), cla("web", ep{addr: "10.1.0.1:8080"}))
	for port := uint32(1); n > 0; port++ {
		fc := chain("vips", tcpProxy("web"))
		fc.FilterChainMatch = &listenerv3.FilterChainMatch{}
		for i := 0; i < 10_000 && n > 0; i, n = i+1, n-1 {
			a := netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)})
			fc.FilterChainMatch.PrefixRanges = append(fc.FilterChainMatch.PrefixRanges,
				&corev3.CidrRange{AddressPrefix: a.String(), PrefixLen: w(32)})
		}
		l := listener(fmt.Sprintf("0.0.0.0_%d", port), "0.0.0.0", port, fc)
		s.Listeners[l.Name] = NewListener(l)
	}
	return s
}

func dump(c model.Config) string {
	var b strings.Builder
	for k, s := range c.Services {
		fmt.Fprintf(&b, "  %s %s %s %v\n", k, s.Name, s.Policy, s.Priorities)
	}
	return b.String()
}

// TestTranslateMaxServices: exactly MaxServices is accepted.
func TestTranslateMaxServices(t *testing.T) {
	s := manyServices(MaxServices)
	cfg, err := Translate(&s)
	if err != nil {
		t.Fatalf("Translate: %v", err)
	}
	if len(cfg.Services) != MaxServices {
		t.Fatalf("got %d services, want %d", len(cfg.Services), MaxServices)
	}
}

// TestRouteAndEndpointNames: the names the client subscribes to for RDS and EDS.
func TestRouteAndEndpointNames(t *testing.T) {
	c2 := edsCluster("c2", rr)
	c2.EdsClusterConfig.ServiceName = "c2-eds"
	s := state(
		listener("a", "10.96.0.1", 80, chain("", hcmRDS("r1"))),
		&listenerv3.Listener{Name: "b", Address: socket("0.0.0.0", 80), FilterChains: []*listenerv3.FilterChain{
			chain("x", hcmRDS("r2"), "10.96.0.2/32"), chain("y", tcpProxy("c"))},
			DefaultFilterChain: chain("d", hcmRDS("r1"))},
		edsCluster("c1", rr), c2,
		&clusterv3.Cluster{Name: "static", LoadAssignment: cla("static", ep{addr: "10.1.0.1:80"})},
	)
	if got, want := routeNames(s.Listeners), []string{"r1", "r2"}; !reflect.DeepEqual(got, want) {
		t.Errorf("routeNames = %v, want %v", got, want)
	}
	if got, want := endpointNames(s.Clusters), []string{"c1", "c2-eds"}; !reflect.DeepEqual(got, want) {
		t.Errorf("endpointNames = %v, want %v", got, want)
	}
}

// TestPortWideRouteConfiguration: Istio-style, one route configuration serves a port for every
// service, a virtual host per service whose domains list its VIP: each VIP's chain gets its own
// service's cluster, not the first virtual host's. A VIP no virtual host names is NACKed.
func TestPortWideRouteConfiguration(t *testing.T) {
	vh := func(name, vip, cluster string) *routev3.VirtualHost {
		return &routev3.VirtualHost{Name: name, Domains: []string{name + ".ns.svc.cluster.local", vip, vip + ":8080"},
			Routes: []*routev3.Route{{Match: prefixMatch("/"), Action: toCluster(cluster)}}}
	}
	rc := &routev3.RouteConfiguration{Name: "8080", VirtualHosts: []*routev3.VirtualHost{
		vh("a", "10.96.0.1", "a"), vh("b", "10.96.0.2", "b")}}
	l := &listenerv3.Listener{Name: "0.0.0.0_8080", Address: socket("0.0.0.0", 8080), FilterChains: []*listenerv3.FilterChain{
		chain("a", hcmRDS("8080"), "10.96.0.1/32"), chain("b", hcmRDS("8080"), "10.96.0.2/32")}}
	s := state(l, rc, edsCluster("a", rr), edsCluster("b", rr), cla("a", ep{addr: "10.1.0.1:8080"}), cla("b", ep{addr: "10.1.0.2:8080"}))
	got, err := Translate(&s)
	if err != nil {
		t.Fatal(err)
	}
	want := config(svc("10.96.0.1:8080", "a", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 1)}),
		svc("10.96.0.2:8080", "b", model.RoundRobin, []model.Endpoint{mep("10.1.0.2:8080", 1)}))
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%swant\n%s", dump(got), dump(want))
	}
	l.FilterChains = append(l.FilterChains, chain("c", hcmRDS("8080"), "10.96.0.3/32"))
	s = state(l, rc, edsCluster("a", rr), edsCluster("b", rr), cla("a", ep{addr: "10.1.0.1:8080"}), cla("b", ep{addr: "10.1.0.2:8080"}))
	if _, err := Translate(&s); err == nil || !strings.Contains(err.Error(), "no virtual host for 10.96.0.3:8080") {
		t.Errorf("a VIP no virtual host names: %v", err)
	}
}
