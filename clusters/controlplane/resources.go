package controlplane

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

// DomainSuffix is the cluster domain of service host names, as in Kubernetes and Istio.
const DomainSuffix = "svc.cluster.local"

// ClusterName is Istio's outbound cluster name of one service port.
func ClusterName(namespace, name string, port uint16) string {
	return fmt.Sprintf("outbound|%d||%s.%s.%s", port, name, namespace, DomainSuffix)
}

// ListenerName is Istio's name of the outbound listener of a TCP service port: bound to the
// VIP, like the listener itself.
func ListenerName(vip netip.Addr, port uint16) string {
	ap := netip.AddrPortFrom(vip, port).String()
	return ap[:strings.LastIndexByte(ap, ':')] + "_" + strconv.Itoa(int(port))
}

// name is Istio's name of the port-wide outbound listener of an HTTP port in a family: one
// chain for every HTTP service of the port, which its route configuration tells apart by the
// VIPs and names in its virtual hosts' domains.
func (k listenerKey) name() string { return fmt.Sprintf("%s_%d", k.wildcard, k.port) }

// PassthroughCluster is where istiod's allow_any virtual host ("*") sends HTTP requests for
// hosts that are no service: the original destination.
const PassthroughCluster = "PassthroughCluster"

// RouteName is Istio's name of the RDS route configuration of an HTTP port.
func RouteName(port uint16) string { return strconv.Itoa(int(port)) }

// IsHTTP reports whether a port is treated as HTTP: Istio's protocol selection by port name.
func IsHTTP(p services.Port) bool {
	return p.Protocol == "TCP" && (p.Name == "http" || strings.HasPrefix(p.Name, "http-"))
}

func wildcard(vip netip.Addr) string {
	if vip.Is4() {
		return "0.0.0.0"
	}
	return "[::]"
}

// lbPolicy maps the agent's policies onto Envoy's.
func lbPolicy(p model.Policy) (clusterv3.Cluster_LbPolicy, error) {
	switch p {
	case model.Random:
		return clusterv3.Cluster_RANDOM, nil
	case model.RoundRobin:
		return clusterv3.Cluster_ROUND_ROBIN, nil
	}
	return 0, fmt.Errorf("load balancing policy %v has no xDS equivalent; use model.Random or model.RoundRobin", p)
}

// adsSource points dependent resources (EDS, RDS) back at the ADS stream, as istiod does.
var adsSource = &corev3.ConfigSource{
	ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	ResourceApiVersion:    corev3.ApiVersion_V3,
}

// listenerKey identifies one port-wide outbound HTTP listener: the wildcard address of a family
// and a port.
type listenerKey struct {
	wildcard string
	port     uint16
}

// build translates one store snapshot into a complete xDS snapshot.
func build(snap services.Snapshot, policy model.Policy) (*cachev3.Snapshot, error) {
	b, err := newBuilder(policy)
	if err != nil {
		return nil, err
	}
	return b.apply(services.Changes{Version: snap.Version, All: true, Services: snap.Services})
}

// builder keeps every service's xDS resources between store versions, so a change rebuilds and
// rehashes only the services it touched: an endpoint change costs one load assignment, not
// 10,000. UDP ports are left out, as istiod does; services without VIPs have nothing to listen
// on and are skipped.
type builder struct {
	lb       clusterv3.Cluster_LbPolicy
	services map[string]*built // by service key
	// The last published resources and delta versions per type. Published maps are shared with
	// the cache and never written again: apply writes changed types to copies.
	items    [types.UnknownType]map[string]types.ResourceWithTTL
	versions [types.UnknownType]map[string]string
	// typeVersion is each type's version: the store version that last changed it. A State of
	// the World client gets a type again only when its version moves, so an endpoint change
	// resends the load assignments, not every listener and cluster (as istiod pushes EDS only).
	typeVersion [types.UnknownType]string
}

// built is what one service contributes to the snapshot.
type built struct {
	svc       services.Service // the definition the resources were built from
	clusters  []versioned
	endpoints []versioned
	listeners []versioned // a TCP port's listener per VIP
	http      []httpPort
}

type httpPort struct {
	port    uint16
	cluster string
	vips    []netip.Addr
}

// versioned is a resource with its delta xDS version: the hash go-control-plane would compute,
// computed once when the resource is built instead of for every resource on every change.
type versioned struct {
	name    string
	res     types.Resource
	version string
}

func newVersioned(res types.Resource) (versioned, error) {
	name := cachev3.GetResourceName(res)
	b, err := cachev3.MarshalResource(res)
	if err != nil {
		return versioned{}, fmt.Errorf("encode %s: %w", name, err)
	}
	return versioned{name: name, res: res, version: cachev3.HashResource(b)}, nil
}

func newBuilder(policy model.Policy) (*builder, error) {
	lb, err := lbPolicy(policy)
	if err != nil {
		return nil, err
	}
	b := &builder{lb: lb, services: map[string]*built{}}
	for t := range b.items {
		b.items[t], b.versions[t] = map[string]types.ResourceWithTTL{}, map[string]string{}
	}
	pt, err := passthroughCluster()
	if err != nil {
		return nil, err
	}
	b.items[types.Cluster][pt.name] = types.ResourceWithTTL{Resource: pt.res}
	b.versions[types.Cluster][pt.name] = pt.version
	return b, nil
}

// apply brings the builder to the store's changes and returns the complete snapshot. On error
// the builder is left as it was, so the same changes can be applied again.
func (b *builder) apply(c services.Changes) (*cachev3.Snapshot, error) {
	version := strconv.FormatUint(c.Version, 10)
	gone := c.Deleted
	if c.All {
		gone = slices.Collect(maps.Keys(b.services))
	}
	next := map[string]*built{} // rebuilt services; nil for removed ones
	for _, key := range gone {
		next[key] = nil
	}
	defined := false // whether any definition changed, and with it clusters, listeners or routes
	for _, v := range c.Services {
		old := b.services[v.Key()]
		var (
			nb  *built
			err error
		)
		if old != nil && reflect.DeepEqual(old.svc, v.Service) {
			nb = &built{svc: old.svc, clusters: old.clusters, listeners: old.listeners, http: old.http}
			nb.endpoints, err = b.loadAssignments(v)
		} else {
			defined = true
			nb, err = b.service(v)
		}
		if err != nil {
			return nil, fmt.Errorf("xDS resources of service %s at store version %s: %w", v.Key(), version, err)
		}
		next[v.Key()] = nb
	}
	for key := range next {
		if _, ok := b.services[key]; !ok && next[key] == nil {
			delete(next, key) // deleted before this builder knew it
		} else if next[key] == nil {
			defined = true
		}
	}

	// Work on copies of the changed types; commit only once everything is built.
	items, versions := b.items, b.versions
	copyType := func(t types.ResponseType) {
		items[t], versions[t] = maps.Clone(b.items[t]), maps.Clone(b.versions[t])
	}
	set := func(t types.ResponseType, old, cur []versioned) {
		for _, r := range old {
			delete(items[t], r.name)
			delete(versions[t], r.name)
		}
		for _, r := range cur {
			items[t][r.name] = types.ResourceWithTTL{Resource: r.res}
			versions[t][r.name] = r.version
		}
	}
	copyType(types.Endpoint)
	if defined {
		copyType(types.Cluster)
	}
	for key, nb := range next {
		var old, cur built
		if b.services[key] != nil {
			old = *b.services[key]
		}
		if nb != nil {
			cur = *nb
		}
		set(types.Endpoint, old.endpoints, cur.endpoints)
		if defined {
			set(types.Cluster, old.clusters, cur.clusters)
		}
	}
	all := b.services
	if defined {
		all = maps.Clone(b.services)
		for key, nb := range next {
			if nb == nil {
				delete(all, key)
			} else {
				all[key] = nb
			}
		}
		listeners, routes, err := b.listenersAndRoutes(all)
		if err != nil {
			return nil, fmt.Errorf("xDS snapshot of store version %s: %w", version, err)
		}
		items[types.Listener], versions[types.Listener] = map[string]types.ResourceWithTTL{}, map[string]string{}
		items[types.Route], versions[types.Route] = map[string]types.ResourceWithTTL{}, map[string]string{}
		set(types.Listener, nil, listeners)
		set(types.Route, nil, routes)
	}

	out := &cachev3.Snapshot{VersionMap: map[string]map[string]string{}}
	typeVersion := b.typeVersion
	for t := range out.Resources {
		typeURL, err := cachev3.GetResponseTypeURL(types.ResponseType(t))
		if err != nil {
			return nil, err
		}
		switch types.ResponseType(t) {
		case types.Endpoint:
			if len(next) > 0 || typeVersion[t] == "" {
				typeVersion[t] = version
			}
		case types.Cluster, types.Listener, types.Route:
			if defined || typeVersion[t] == "" {
				typeVersion[t] = version
			}
		default:
			typeVersion[t] = version
		}
		out.Resources[t] = cachev3.Resources{Version: typeVersion[t], Items: items[t]}
		out.VersionMap[typeURL] = versions[t]
	}
	// An inconsistent snapshot would leave ADS clients waiting for resources that never come.
	// Only definitions change which resources reference which.
	if defined {
		if err := out.Consistent(); err != nil {
			return nil, fmt.Errorf("xDS snapshot of store version %s is inconsistent: %w", version, err)
		}
	} else {
		maps.Copy(all, next) // no service came or went: next holds only rebuilt ones
	}
	b.services, b.items, b.versions, b.typeVersion = all, items, versions, typeVersion
	return out, nil
}

// service builds the clusters, load assignments and listeners of one service, in istiod's
// shapes: a TCP port gets a listener bound to each VIP; an HTTP port joins the port-wide
// listener, its VIPs named in its virtual host's domains.
func (b *builder) service(svc services.ServiceView) (*built, error) {
	out := &built{svc: svc.Service}
	if len(svc.ClusterIPs) == 0 {
		return out, nil
	}
	var err error
	if out.endpoints, err = b.loadAssignments(svc); err != nil {
		return nil, err
	}
	for _, p := range svc.Ports {
		if p.Protocol != "TCP" {
			continue
		}
		name := ClusterName(svc.Namespace, svc.Name, p.Port)
		cluster, err := newVersioned(&clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource, ServiceName: name},
			ConnectTimeout:       durationpb.New(10 * time.Second),
			LbPolicy:             b.lb,
		})
		if err != nil {
			return nil, err
		}
		out.clusters = append(out.clusters, cluster)
		if IsHTTP(p) {
			out.http = append(out.http, httpPort{p.Port, name, svc.ClusterIPs})
			continue
		}
		filter, err := tcpFilter(name)
		if err != nil {
			return nil, err
		}
		for _, vip := range svc.ClusterIPs {
			l, err := newVersioned(outboundListener(ListenerName(vip, p.Port), vip.String(), p.Port,
				&listenerv3.FilterChain{Filters: []*listenerv3.Filter{filter}}))
			if err != nil {
				return nil, err
			}
			out.listeners = append(out.listeners, l)
		}
	}
	return out, nil
}

// loadAssignments builds the load assignments of a service's TCP ports.
func (b *builder) loadAssignments(svc services.ServiceView) ([]versioned, error) {
	if len(svc.ClusterIPs) == 0 {
		return nil, nil
	}
	var out []versioned
	for _, p := range svc.Ports {
		if p.Protocol != "TCP" {
			continue
		}
		cla, err := newVersioned(loadAssignment(ClusterName(svc.Namespace, svc.Name, p.Port), svc, p))
		if err != nil {
			return nil, err
		}
		out = append(out, cla)
	}
	return out, nil
}

// listenersAndRoutes assembles the listeners and route configurations from every service's
// listeners and HTTP ports, in the order of service keys.
func (b *builder) listenersAndRoutes(all map[string]*built) (listeners, routes []versioned, err error) {
	keys := slices.Sorted(maps.Keys(all))
	httpPorts := map[listenerKey]bool{}
	shortNames := map[uint16]map[string]int{} // how many HTTP services on a port share a short name
	for _, key := range keys {
		listeners = append(listeners, all[key].listeners...)
		for _, h := range all[key].http {
			if shortNames[h.port] == nil {
				shortNames[h.port] = map[string]int{}
			}
			shortNames[h.port][all[key].svc.Name]++
			for _, vip := range h.vips {
				httpPorts[listenerKey{wildcard(vip), h.port}] = true
			}
		}
	}
	vhosts := map[uint16][]*routev3.VirtualHost{}
	for _, key := range keys {
		for _, h := range all[key].http {
			svc := all[key].svc
			vhosts[h.port] = append(vhosts[h.port], virtualHost(svc, h.port, h.cluster, shortNames[h.port][svc.Name] == 1))
		}
	}
	for _, k := range sortedKeys(httpPorts, func(a, b listenerKey) int {
		return cmp.Or(cmp.Compare(a.port, b.port), strings.Compare(a.wildcard, b.wildcard))
	}) {
		filter, err := httpFilter(k.port)
		if err != nil {
			return nil, nil, err
		}
		l, err := newVersioned(outboundListener(k.name(), strings.Trim(k.wildcard, "[]"), k.port,
			&listenerv3.FilterChain{Filters: []*listenerv3.Filter{filter}}))
		if err != nil {
			return nil, nil, err
		}
		listeners = append(listeners, l)
	}
	for _, port := range sortedKeys(vhosts, cmp.Compare[uint16]) {
		r, err := newVersioned(&routev3.RouteConfiguration{
			Name:             RouteName(port),
			VirtualHosts:     append(vhosts[port], allowAny()),
			ValidateClusters: wrapperspb.Bool(false),
		})
		if err != nil {
			return nil, nil, err
		}
		routes = append(routes, r)
	}
	return listeners, routes, nil
}

// loadAssignment lists the service's endpoints at the target port, grouped by node as locality.
// A dual-stack endpoint carries its address in the primary VIP family and the others as
// additional addresses, as istiod does, so each listener family finds a same-family backend.
func loadAssignment(cluster string, svc services.ServiceView, p services.Port) *endpointv3.ClusterLoadAssignment {
	target := cmp.Or(p.TargetPort, p.Port)
	byNode := map[string][]*endpointv3.LbEndpoint{}
	for _, e := range svc.Endpoints {
		var addrs []*corev3.Address
		for _, vip := range svc.ClusterIPs {
			if i := slices.IndexFunc(e.IPs, func(ip netip.Addr) bool { return ip.Is4() == vip.Is4() }); i >= 0 {
				addrs = append(addrs, socketAddress(e.IPs[i].String(), target))
			}
		}
		if len(addrs) == 0 {
			continue // the pod has no address any client of this service could reach
		}
		ep := &endpointv3.Endpoint{Address: addrs[0]}
		for _, a := range addrs[1:] {
			ep.AdditionalAddresses = append(ep.AdditionalAddresses, &endpointv3.Endpoint_AdditionalAddress{Address: a})
		}
		health := corev3.HealthStatus_HEALTHY
		if !e.Ready {
			health = corev3.HealthStatus_UNHEALTHY
		}
		byNode[e.Node] = append(byNode[e.Node], &endpointv3.LbEndpoint{
			HostIdentifier:      &endpointv3.LbEndpoint_Endpoint{Endpoint: ep},
			HealthStatus:        health,
			LoadBalancingWeight: wrapperspb.UInt32(1),
		})
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	for _, node := range sortedKeys(byNode, strings.Compare) {
		cla.Endpoints = append(cla.Endpoints, &endpointv3.LocalityLbEndpoints{
			Locality:            &corev3.Locality{Zone: node},
			LbEndpoints:         byNode[node],
			LoadBalancingWeight: wrapperspb.UInt32(uint32(len(byNode[node]))),
			Priority:            0,
		})
	}
	return cla
}

func socketAddress(ip string, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// outboundListener is Istio's virtual outbound listener: it does not bind; the proxy's
// catch-all listener hands it the connections to its address (a VIP, or any address) and port.
func outboundListener(name, addr string, port uint16, chains ...*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(addr, port),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		BindToPort:       wrapperspb.Bool(false),
		FilterChains:     chains,
	}
}

// allowAny is istiod's last virtual host of every HTTP port (outboundTrafficPolicy ALLOW_ANY):
// any other host goes to its original destination.
func allowAny() *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: "allow_any", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Name:  "allow_any",
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: PassthroughCluster},
		}},
	}}}
}

// passthroughCluster is istiod's cluster of the original destination.
func passthroughCluster() (versioned, error) {
	return newVersioned(&clusterv3.Cluster{
		Name:                 PassthroughCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(10 * time.Second),
	})
}

func tcpFilter(cluster string) (*listenerv3.Filter, error) {
	return typedFilter(wellknown.TCPProxy, &tcpproxyv3.TcpProxy{
		StatPrefix:       cluster,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
	})
}

func httpFilter(port uint16) (*listenerv3.Filter, error) {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, fmt.Errorf("encode HTTP router of port %d: %w", port, err)
	}
	return typedFilter(wellknown.HTTPConnectionManager, &hcmv3.HttpConnectionManager{
		StatPrefix: fmt.Sprintf("outbound_0.0.0.0_%d", port),
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsSource,
			RouteConfigName: RouteName(port),
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router},
		}},
	})
}

func typedFilter(name string, cfg proto.Message) (*listenerv3.Filter, error) {
	a, err := anypb.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("encode %s filter: %w", name, err)
	}
	return &listenerv3.Filter{Name: name, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}, nil
}

// virtualHost routes every path to the service's cluster. The short name is left out when
// services in several namespaces share it: Envoy rejects a domain twice in one route config.
func virtualHost(svc services.Service, port uint16, cluster string, uniqueShortName bool) *routev3.VirtualHost {
	fqdn := fmt.Sprintf("%s.%s.%s", svc.Name, svc.Namespace, DomainSuffix)
	var domains []string
	if uniqueShortName {
		domains = append(domains, svc.Name)
	}
	domains = append(domains, svc.Name+"."+svc.Namespace, fqdn)
	for _, vip := range svc.ClusterIPs {
		// Host headers bracket IPv6 literals, with or without the port.
		ap := netip.AddrPortFrom(vip, port).String()
		domains = append(domains, strings.TrimSuffix(ap, ":"+RouteName(port)), ap)
	}
	return &routev3.VirtualHost{
		Name:    fmt.Sprintf("%s:%d", fqdn, port),
		Domains: domains,
		Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			}},
		}},
	}
}

func sortedKeys[K comparable, V any](m map[K]V, compare func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compare)
	return keys
}
