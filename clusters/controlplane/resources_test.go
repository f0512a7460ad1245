package controlplane

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

var (
	v4CIDR = netip.MustParsePrefix("10.96.0.0/16")
	v6CIDR = netip.MustParsePrefix("fd00:10:96::/112")
)

// xdsTypes are the resource types the control plane serves, in ADS order.
var xdsTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// resourceSet is what a client holds: type URL -> resource name -> resource.
type resourceSet map[string]map[string]proto.Message

func snapshotResources(xs *cachev3.Snapshot) resourceSet {
	out := resourceSet{}
	for _, typ := range xdsTypes {
		out[typ] = map[string]proto.Message{}
		for name, r := range xs.GetResources(typ) {
			out[typ][name] = r
		}
	}
	return out
}

// summary renders every field the agent's translation reads as one sorted line per cluster,
// endpoint, listener filter chain and virtual host, so tests compare whole configurations.
func summary(rs resourceSet) []string {
	var out []string
	for name, m := range rs[resourcev3.ClusterType] {
		c := m.(*clusterv3.Cluster)
		out = append(out, fmt.Sprintf("cluster %s %s %s eds=%s ads=%t", name, c.GetType(), c.GetLbPolicy(),
			c.GetEdsClusterConfig().GetServiceName(), c.GetEdsClusterConfig().GetEdsConfig().GetAds() != nil))
	}
	for name, m := range rs[resourcev3.EndpointType] {
		cla := m.(*endpointv3.ClusterLoadAssignment)
		if cla.GetClusterName() != name {
			out = append(out, fmt.Sprintf("endpoints %s named %s", name, cla.GetClusterName()))
		}
		if len(cla.GetEndpoints()) == 0 {
			out = append(out, "endpoints "+name+" none")
		}
		for _, l := range cla.GetEndpoints() {
			for _, e := range l.GetLbEndpoints() {
				addrs := []string{sockAddr(e.GetEndpoint().GetAddress())}
				for _, a := range e.GetEndpoint().GetAdditionalAddresses() {
					addrs = append(addrs, sockAddr(a.GetAddress()))
				}
				out = append(out, fmt.Sprintf("endpoint %s zone=%s p%d lw=%d %s %s w=%d", name, l.GetLocality().GetZone(),
					l.GetPriority(), l.GetLoadBalancingWeight().GetValue(), strings.Join(addrs, "+"), e.GetHealthStatus(),
					e.GetLoadBalancingWeight().GetValue()))
			}
		}
	}
	for name, m := range rs[resourcev3.ListenerType] {
		l := m.(*listenerv3.Listener)
		head := fmt.Sprintf("listener %s %s bind=%t %s", name, sockAddr(l.GetAddress()), l.GetBindToPort().GetValue(), l.GetTrafficDirection())
		for _, ch := range l.GetFilterChains() {
			var match []string
			for _, r := range ch.GetFilterChainMatch().GetPrefixRanges() {
				match = append(match, fmt.Sprintf("%s/%d", r.GetAddressPrefix(), r.GetPrefixLen().GetValue()))
			}
			for _, f := range ch.GetFilters() {
				out = append(out, fmt.Sprintf("%s %s -> %s", head, strings.Join(match, ","), filterSummary(f)))
			}
		}
	}
	for name, m := range rs[resourcev3.RouteType] {
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				out = append(out, fmt.Sprintf("route %s %s %v %s -> %s", name, vh.GetName(), vh.GetDomains(),
					r.GetMatch().GetPrefix(), r.GetRoute().GetCluster()))
			}
		}
	}
	slices.Sort(out)
	return out
}

func sockAddr(a *corev3.Address) string {
	sa := a.GetSocketAddress()
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(netip.MustParseAddr(sa.GetAddress()), uint16(sa.GetPortValue())), sa.GetProtocol())
}

func filterSummary(f *listenerv3.Filter) string {
	cfg, err := f.GetTypedConfig().UnmarshalNew()
	if err != nil {
		return fmt.Sprintf("%s: %v", f.GetName(), err)
	}
	switch c := cfg.(type) {
	case *tcpproxyv3.TcpProxy:
		return fmt.Sprintf("%s tcp %s", f.GetName(), c.GetCluster())
	case *hcmv3.HttpConnectionManager:
		return fmt.Sprintf("%s http rds=%s ads=%t", f.GetName(), c.GetRds().GetRouteConfigName(), c.GetRds().GetConfigSource().GetAds() != nil)
	}
	return fmt.Sprintf("%s %T", f.GetName(), cfg)
}

func diffLines(got, want []string) string {
	var b strings.Builder
	for _, w := range want {
		if !slices.Contains(got, w) {
			fmt.Fprintf(&b, "\n  missing: %s", w)
		}
	}
	for _, g := range got {
		if !slices.Contains(want, g) {
			fmt.Fprintf(&b, "\n  extra:   %s", g)
		}
	}
	return b.String()
}

func view(svc services.Service, eps ...services.Endpoint) services.ServiceView {
	return services.ServiceView{Service: svc, Endpoints: eps}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestBuild(t *testing.T) {
	const (
		webCluster = "outbound|80||web.default.svc.cluster.local"
		tcpCluster = "outbound|9000||raw.default.svc.cluster.local"
	)
	httpPort := []services.Port{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}}
	ready := services.Endpoint{Pod: "a", Node: "n1", IPs: addrs("10.244.1.2", "fd00:10:244:1::2"), Ready: true}
	tests := []struct {
		name     string
		services []services.ServiceView
		policy   model.Policy
		want     []string
	}{
		{
			name: "ipv6-only service gets only the [::] listener and IPv6 endpoints",
			services: []services.ServiceView{view(services.Service{Namespace: "default", Name: "web",
				ClusterIPs: addrs("fd00:10:96::5"), Ports: httpPort}, ready)},
			policy: model.RoundRobin,
			want: []string{
				"cluster " + webCluster + " EDS ROUND_ROBIN eds=" + webCluster + " ads=true",
				"endpoint " + webCluster + " zone=n1 p0 lw=1 [fd00:10:244:1::2]:8080/TCP HEALTHY w=1",
				"listener [::]_80 [::]:80/TCP bind=false OUTBOUND  -> envoy.filters.network.http_connection_manager http rds=80 ads=true",
				"route 80 web.default.svc.cluster.local:80 [web web.default web.default.svc.cluster.local [fd00:10:96::5] [fd00:10:96::5]:80] / -> " + webCluster,
				"route 80 allow_any [*] / -> PassthroughCluster",
			},
		},
		{
			name: "ports not named http or http-* are TCP; UDP ports and services without VIPs are skipped",
			services: []services.ServiceView{
				view(services.Service{Namespace: "default", Name: "raw", ClusterIPs: addrs("10.96.0.7"), Ports: []services.Port{
					{Name: "httpx", Port: 9000, TargetPort: 9000, Protocol: "TCP"},
					{Name: "http-dns", Port: 53, TargetPort: 53, Protocol: "UDP"},
				}}, ready),
				view(services.Service{Namespace: "default", Name: "headless", Ports: httpPort}, ready),
			},
			want: []string{
				"cluster " + tcpCluster + " EDS RANDOM eds=" + tcpCluster + " ads=true",
				"endpoint " + tcpCluster + " zone=n1 p0 lw=1 10.244.1.2:9000/TCP HEALTHY w=1",
				"listener 10.96.0.7_9000 10.96.0.7:9000/TCP bind=false OUTBOUND  -> envoy.filters.network.tcp_proxy tcp " + tcpCluster,
			},
		},
		{
			name: "target port defaults to the port; pods without an address of the VIP family and unready pods",
			services: []services.ServiceView{view(services.Service{Namespace: "default", Name: "raw", ClusterIPs: addrs("10.96.0.7"),
				Ports: []services.Port{{Name: "tcp", Port: 9000, Protocol: "TCP"}}},
				services.Endpoint{Pod: "v6only", Node: "n1", IPs: addrs("fd00:10:244:1::3"), Ready: true},
				services.Endpoint{Pod: "b", Node: "n2", IPs: addrs("10.244.2.2"), Ready: false},
				services.Endpoint{Pod: "c", Node: "n2", IPs: addrs("10.244.2.3"), Ready: true},
			)},
			want: []string{
				"cluster " + tcpCluster + " EDS RANDOM eds=" + tcpCluster + " ads=true",
				"endpoint " + tcpCluster + " zone=n2 p0 lw=2 10.244.2.2:9000/TCP UNHEALTHY w=1",
				"endpoint " + tcpCluster + " zone=n2 p0 lw=2 10.244.2.3:9000/TCP HEALTHY w=1",
				"listener 10.96.0.7_9000 10.96.0.7:9000/TCP bind=false OUTBOUND  -> envoy.filters.network.tcp_proxy tcp " + tcpCluster,
			},
		},
		{
			name: "a short name shared across namespaces is left out of both virtual hosts",
			services: []services.ServiceView{
				view(services.Service{Namespace: "a", Name: "web", ClusterIPs: addrs("10.96.0.1"), Ports: httpPort}),
				view(services.Service{Namespace: "b", Name: "web", ClusterIPs: addrs("10.96.0.2"),
					Ports: []services.Port{{Name: "http-web", Port: 80, TargetPort: 80, Protocol: "TCP"}}}),
			},
			want: []string{
				"cluster outbound|80||web.a.svc.cluster.local EDS RANDOM eds=outbound|80||web.a.svc.cluster.local ads=true",
				"cluster outbound|80||web.b.svc.cluster.local EDS RANDOM eds=outbound|80||web.b.svc.cluster.local ads=true",
				"endpoints outbound|80||web.a.svc.cluster.local none",
				"endpoints outbound|80||web.b.svc.cluster.local none",
				"listener 0.0.0.0_80 0.0.0.0:80/TCP bind=false OUTBOUND  -> envoy.filters.network.http_connection_manager http rds=80 ads=true",
				"route 80 web.a.svc.cluster.local:80 [web.a web.a.svc.cluster.local 10.96.0.1 10.96.0.1:80] / -> outbound|80||web.a.svc.cluster.local",
				"route 80 web.b.svc.cluster.local:80 [web.b web.b.svc.cluster.local 10.96.0.2 10.96.0.2:80] / -> outbound|80||web.b.svc.cluster.local",
				"route 80 allow_any [*] / -> PassthroughCluster",
			},
		},
		{
			name: "empty store",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			xs, err := build(services.Snapshot{Version: 7, Services: tt.services}, tt.policy)
			if err != nil {
				t.Fatalf("build: %v", err)
			}
			for _, typ := range xdsTypes {
				if v := xs.GetVersion(typ); v != "7" {
					t.Errorf("%s version = %q, want the store version 7", typ, v)
				}
			}
			// istiod's PassthroughCluster is always there, for the allow_any virtual hosts.
			want := slices.Sorted(slices.Values(append(slices.Clone(tt.want), "cluster PassthroughCluster ORIGINAL_DST CLUSTER_PROVIDED eds= ads=false")))
			if got := summary(snapshotResources(xs)); !slices.Equal(got, want) {
				t.Errorf("resources differ:%s", diffLines(got, want))
			}
		})
	}
}

func TestBuildRefusesPoliciesXDSCannotExpress(t *testing.T) {
	_, err := build(services.Snapshot{}, model.Policy(9))
	if err == nil || !strings.Contains(err.Error(), "policy(9)") {
		t.Fatalf("build with policy 9: err = %v, want one naming the policy", err)
	}
}

// TestSnapshotsStayConsistent drives a store through random changes and checks every snapshot:
// go-control-plane's Consistent, and every cluster and listener chain has what it points at.
func TestSnapshotsStayConsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	st := services.New(v4CIDR, v6CIDR)
	names := []string{"a", "b", "c", "d"}
	ports := []services.Port{
		{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"},
		{Name: "http-alt", Port: 8080, TargetPort: 8080, Protocol: "TCP"},
		{Name: "grpc", Port: 9000, TargetPort: 9000, Protocol: "TCP"},
		{Name: "dns", Port: 53, TargetPort: 53, Protocol: "UDP"},
	}
	incremental, err := newBuilder(model.Random)
	if err != nil {
		t.Fatal(err)
	}
	wl := newWorkloadPublisher()
	wl.wanted = true
	var prev *cachev3.Snapshot
	var applied uint64
	for step := range 500 {
		name := names[rng.IntN(len(names))]
		ns := []string{"x", "y"}[rng.IntN(2)]
		switch rng.IntN(4) {
		case 0:
			svc := services.Service{Namespace: ns, Name: name, Selector: map[string]string{"app": name}}
			for _, p := range ports {
				if rng.IntN(2) == 0 {
					svc.Ports = append(svc.Ports, p)
				}
			}
			if rng.IntN(3) == 0 {
				svc.ClusterIPs = addrs(fmt.Sprintf("10.96.1.%d", step%250+1)) // single-stack
			}
			if _, err := st.UpsertService(svc); err != nil && !strings.Contains(err.Error(), "cannot change") && !strings.Contains(err.Error(), "already used") {
				t.Fatalf("step %d: %v", step, err)
			}
		case 1:
			st.DeleteService(ns, name)
		case 2:
			i := rng.IntN(8)
			st.UpsertPod(services.Pod{Namespace: ns, Name: fmt.Sprintf("p%d", i), Node: fmt.Sprintf("n%d", i%3+1),
				IPs:    addrs(fmt.Sprintf("10.244.0.%d", i+2), fmt.Sprintf("fd00:10:244::%d", i+2)),
				Labels: map[string]string{"app": name}, Ready: rng.IntN(3) > 0})
		case 3:
			st.DeletePod(fmt.Sprintf("p%d", rng.IntN(8)))
		}
		snap := st.Snapshot()
		xs, err := build(snap, model.Random)
		if err != nil {
			t.Fatalf("step %d (store version %d): %v\nstore:\n%s", step, snap.Version, err, snap)
		}
		if err := checkReferences(snapshotResources(xs)); err != nil {
			t.Fatalf("step %d (store version %d): %v\nstore:\n%s", step, snap.Version, err, snap)
		}
		// Applying only the changes must give what building everything anew gives.
		changes := st.ChangesSince(applied)
		inc, err := incremental.apply(changes)
		if err != nil {
			t.Fatalf("step %d (store version %d): incremental: %v", step, snap.Version, err)
		}
		applied = changes.Version
		// The workload API too: following the changes gives what translating everything gives.
		if err := wl.publish(st); err != nil {
			t.Fatalf("step %d: workload API: %v", step, err)
		}
		full, got := workloadResources(snap), wl.cache.GetResources()
		if len(full) != len(got) {
			t.Fatalf("step %d: workload API holds %d resources, want %d", step, len(got), len(full))
		}
		for name, a := range full {
			if !proto.Equal(a, got[name]) {
				t.Fatalf("step %d: workload API resource %s = %v, want %v", step, name, got[name], a)
			}
		}
		if err := sameSnapshot(inc, xs); err != nil {
			t.Fatalf("step %d (store version %d): incremental snapshot differs from a full build: %v\nstore:\n%s", step, snap.Version, err, snap)
		}
		// A State of the World client gets a type again only when its version moves: every
		// change to a type's resources must move it.
		if prev != nil {
			for typ := range inc.Resources {
				if !sameItems(prev.Resources[typ], inc.Resources[typ]) && prev.Resources[typ].Version == inc.Resources[typ].Version {
					t.Fatalf("step %d: type %d changed but kept version %s", step, typ, inc.Resources[typ].Version)
				}
			}
		}
		prev = inc
	}
}

func sameItems(a, b cachev3.Resources) bool {
	if len(a.Items) != len(b.Items) {
		return false
	}
	for name, r := range a.Items {
		if o, ok := b.Items[name]; !ok || !proto.Equal(o.Resource, r.Resource) {
			return false
		}
	}
	return true
}

// sameSnapshot compares two snapshots' resources and delta versions (not their types' versions:
// an incremental one keeps a type's version while nothing changes it); the delta
// versions must be the hashes go-control-plane computes itself.
func sameSnapshot(got, want *cachev3.Snapshot) error {
	if err := want.ConstructVersionMap(); err != nil {
		return err
	}
	for typ := range got.Resources {
		g, w := got.Resources[typ], want.Resources[typ]
		if len(g.Items) != len(w.Items) {
			return fmt.Errorf("type %d: version %s with %d resources, want %s with %d", typ, g.Version, len(g.Items), w.Version, len(w.Items))
		}
		for name, r := range w.Items {
			if !proto.Equal(g.Items[name].Resource, r.Resource) {
				return fmt.Errorf("type %d: %s is\n%v\nwant\n%v", typ, name, g.Items[name].Resource, r.Resource)
			}
		}
	}
	if !reflect.DeepEqual(got.VersionMap, want.VersionMap) {
		return fmt.Errorf("delta versions\n%v\nwant\n%v", got.VersionMap, want.VersionMap)
	}
	return nil
}

// checkReferences checks that EDS holds exactly the clusters' assignments, RDS exactly the
// listeners' routes, and every filter and route points at an existing cluster.
func checkReferences(rs resourceSet) error {
	clusters := map[string]bool{}
	for name := range rs[resourcev3.ClusterType] {
		clusters[name] = true
		if rs[resourcev3.EndpointType][name] == nil && rs[resourcev3.ClusterType][name].(*clusterv3.Cluster).GetType() == clusterv3.Cluster_EDS {
			return fmt.Errorf("cluster %s has no load assignment", name)
		}
	}
	for name := range rs[resourcev3.EndpointType] {
		if !clusters[name] {
			return fmt.Errorf("load assignment %s has no cluster", name)
		}
	}
	routes := map[string]bool{}
	for name, m := range rs[resourcev3.ListenerType] {
		for _, ch := range m.(*listenerv3.Listener).GetFilterChains() {
			for _, f := range ch.GetFilters() {
				cfg, err := f.GetTypedConfig().UnmarshalNew()
				if err != nil {
					return fmt.Errorf("listener %s chain %s: %w", name, ch.GetName(), err)
				}
				switch c := cfg.(type) {
				case *tcpproxyv3.TcpProxy:
					if !clusters[c.GetCluster()] {
						return fmt.Errorf("listener %s chain %s: tcp_proxy to missing cluster %s", name, ch.GetName(), c.GetCluster())
					}
				case *hcmv3.HttpConnectionManager:
					routes[c.GetRds().GetRouteConfigName()] = true
				}
			}
		}
	}
	for name, m := range rs[resourcev3.RouteType] {
		if !routes[name] {
			return fmt.Errorf("route %s is not used by any listener", name)
		}
		domains := map[string]bool{}
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, d := range vh.GetDomains() {
				if domains[d] {
					return fmt.Errorf("route %s: domain %s appears twice (Envoy would reject it)", name, d)
				}
				domains[d] = true
			}
			for _, r := range vh.GetRoutes() {
				if !clusters[r.GetRoute().GetCluster()] {
					return fmt.Errorf("route %s: virtual host %s routes to missing cluster %s", name, vh.GetName(), r.GetRoute().GetCluster())
				}
			}
		}
	}
	for name := range routes {
		if rs[resourcev3.RouteType][name] == nil {
			return fmt.Errorf("route %s is used by a listener but missing", name)
		}
	}
	return nil
}
