package xds

import (
	"net"
	"net/netip"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// Builders for xDS resources as a control plane would send them, shared by the translation,
// client and fuzz tests.

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages that cannot fail to marshal
	}
	return a
}

func socket(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// chain is a filter chain with one network filter (tcp_proxy or http_connection_manager),
// matching the given destination prefixes ("10.96.0.1/32").
func chain(name string, filter proto.Message, prefixes ...string) *listenerv3.FilterChain {
	fc := &listenerv3.FilterChain{Name: name, Filters: []*listenerv3.Filter{{
		Name: "envoy.filters.network.terminal", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(filter)},
	}}}
	for _, p := range prefixes {
		pf := netip.MustParsePrefix(p)
		if fc.FilterChainMatch == nil {
			fc.FilterChainMatch = &listenerv3.FilterChainMatch{}
		}
		fc.FilterChainMatch.PrefixRanges = append(fc.FilterChainMatch.PrefixRanges, &corev3.CidrRange{
			AddressPrefix: pf.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pf.Bits())),
		})
	}
	return fc
}

func listener(name, host string, port uint32, chains ...*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{Name: name, Address: socket(host, port), FilterChains: chains}
}

func tcpProxy(cluster string) *tcpproxyv3.TcpProxy {
	return &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}}
}

// weightedTCP is a tcp_proxy over clusters and weights: "v1", 90, "v2", 10.
func weightedTCP(namesAndWeights ...any) *tcpproxyv3.TcpProxy {
	wc := &tcpproxyv3.TcpProxy_WeightedCluster{}
	for i := 0; i < len(namesAndWeights); i += 2 {
		wc.Clusters = append(wc.Clusters, &tcpproxyv3.TcpProxy_WeightedCluster_ClusterWeight{
			Name: namesAndWeights[i].(string), Weight: uint32(namesAndWeights[i+1].(int)),
		})
	}
	return &tcpproxyv3.TcpProxy{StatPrefix: "weighted", ClusterSpecifier: &tcpproxyv3.TcpProxy_WeightedClusters{WeightedClusters: wc}}
}

func hcmRDS(routeName string) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{StatPrefix: routeName, RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{
		Rds: &hcmv3.Rds{RouteConfigName: routeName, ConfigSource: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}},
	}}
}

func hcmInline(rc *routev3.RouteConfiguration) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{StatPrefix: rc.GetName(), RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc}}
}

func prefixMatch(p string) *routev3.RouteMatch {
	return &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: p}}
}

func toCluster(c string) *routev3.Route_Route {
	return &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: c}}}
}

// routeTo is a route configuration whose first virtual host sends a header-matched canary
// route to "canary" (ignored at L4) before its catch-all route to cluster; a second virtual
// host is ignored too.
func routeTo(name, cluster string) *routev3.RouteConfiguration {
	canary := prefixMatch("/")
	canary.Headers = []*routev3.HeaderMatcher{{Name: "x-canary"}}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{
		{Name: "all", Domains: []string{"*"}, Routes: []*routev3.Route{
			{Name: "canary", Match: canary, Action: toCluster("canary")},
			{Name: "api", Match: prefixMatch("/api"), Action: toCluster("api-only")},
			{Name: "default", Match: prefixMatch("/"), Action: toCluster(cluster)},
		}},
		{Name: "other", Domains: []string{"other.example"}, Routes: []*routev3.Route{
			{Name: "other", Match: prefixMatch("/"), Action: toCluster("other")},
		}},
	}}
}

func edsCluster(name string, lb clusterv3.Cluster_LbPolicy) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}},
		LbPolicy: lb,
	}
}

// ep is one endpoint for cla: address "10.1.0.1:8080" (a host name is allowed, for the
// non-IP case), priority, weight (nil: unset) and health.
type ep struct {
	addr   string
	prio   uint32
	weight *wrapperspb.UInt32Value
	health corev3.HealthStatus
}

// cla puts each priority's endpoints in one locality.
func cla(name string, eps ...ep) *endpointv3.ClusterLoadAssignment {
	c := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	byPrio := map[uint32]*endpointv3.LocalityLbEndpoints{}
	for _, e := range eps {
		host, port, err := net.SplitHostPort(e.addr)
		if err != nil {
			panic(err)
		}
		p, _ := strconv.Atoi(port)
		loc := byPrio[e.prio]
		if loc == nil {
			loc = &endpointv3.LocalityLbEndpoints{Priority: e.prio, Locality: &corev3.Locality{Zone: "z" + strconv.Itoa(int(e.prio))}}
			byPrio[e.prio] = loc
			c.Endpoints = append(c.Endpoints, loc)
		}
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socket(host, uint32(p))}},
			HealthStatus:        e.health,
			LoadBalancingWeight: e.weight,
		})
	}
	return c
}

func key(vip string) model.Key {
	ap := netip.MustParseAddrPort(vip)
	return model.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: model.TCP}
}

func mep(addr string, w uint32) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddrPort(addr), Weight: w}
}

func svc(vip, name string, p model.Policy, levels ...[]model.Endpoint) model.Service {
	return model.Service{Key: key(vip), Name: name, Policy: p, Priorities: levels}
}

func config(svcs ...model.Service) model.Config {
	c := model.Config{Services: map[model.Key]model.Service{}}
	for _, s := range svcs {
		c.Services[s.Key] = s
	}
	return c
}

// state indexes resources by name.
func state(resources ...proto.Message) State {
	s := State{
		Listeners: map[string]*Listener{},
		Routes:    map[string]*routev3.RouteConfiguration{},
		Clusters:  map[string]*Cluster{},
		Endpoints: map[string]*Assignment{},
	}
	for _, r := range resources {
		switch v := r.(type) {
		case *listenerv3.Listener:
			s.Listeners[v.GetName()] = NewListener(v)
		case *routev3.RouteConfiguration:
			s.Routes[v.GetName()] = v
		case *clusterv3.Cluster:
			s.Clusters[v.GetName()] = NewCluster(v)
		case *endpointv3.ClusterLoadAssignment:
			s.Endpoints[v.GetClusterName()] = NewAssignment(v)
		default:
			panic("state: unexpected resource type")
		}
	}
	return s
}
