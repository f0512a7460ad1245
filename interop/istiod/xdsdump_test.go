package istiod

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/encoding/prototext"

	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/workloadapi"
)

// logConnections logs every proxy connected to the fake istiod as istiod saw it (identity,
// namespace, type) and, per subscribed type, whether the last response was ACKed.
func logConnections(t *testing.T, fake *xds.FakeDiscoveryServer) []*model.Proxy {
	t.Helper()
	var out []*model.Proxy
	for _, con := range fake.Discovery.AllClients() {
		p := con.Proxy()
		if p == nil {
			continue
		}
		out = append(out, p)
		t.Logf("istiod sees proxy %q: type %s, IPs %v, config namespace %s, cluster %s, node name %q, DNS domain %s",
			p.ID, p.Type, p.IPAddresses, p.ConfigNamespace, p.Metadata.ClusterID, p.Metadata.NodeName, p.DNSDomain)
		w := p.DeepCloneWatchedResources()
		types := make([]string, 0, len(w))
		for k := range w {
			types = append(types, k)
		}
		sort.Strings(types)
		for _, k := range types {
			r := w[k]
			state := "acked"
			if r.NonceSent != r.NonceAcked {
				state = fmt.Sprintf("NOT acked (sent %q, acked %q)", r.NonceSent, r.NonceAcked)
			}
			t.Logf("  watches %s: wildcard %v, %d names, last response %s", k, r.Wildcard, len(r.ResourceNames), state)
		}
	}
	if len(out) == 0 {
		t.Logf("istiod has no proxy connected")
	}
	return out
}

// envoyShapes describes the LDS/RDS/CDS/EDS istiod generates for a sidecar proxy: listener
// names and filter chains (matches and network filters), route configurations (virtual hosts,
// domains, route actions), outbound clusters (discovery type, LB policy) and endpoints.
func envoyShapes(fake *xds.FakeDiscoveryServer, p *model.Proxy) []string {
	var out []string
	ls := fake.Listeners(p)
	for _, l := range ls {
		sa := l.GetAddress().GetSocketAddress()
		out = append(out, fmt.Sprintf("LDS %s %s:%d use_original_dst=%v", l.Name, sa.GetAddress(), sa.GetPortValue(), l.GetUseOriginalDst().GetValue()))
		for _, fc := range l.FilterChains {
			out = append(out, "      chain "+chainSummary(fc))
		}
		if fc := l.DefaultFilterChain; fc != nil {
			out = append(out, "      default "+chainSummary(fc))
		}
	}
	for _, rc := range fake.RoutesFromListeners(p, ls) {
		out = append(out, fmt.Sprintf("RDS %s: %d virtual hosts", rc.Name, len(rc.VirtualHosts)))
		for _, vh := range rc.VirtualHosts {
			var actions []string
			for _, r := range vh.Routes {
				a := r.GetRoute()
				switch {
				case a == nil:
					actions = append(actions, fmt.Sprintf("%s->non-route(%T)", r.GetMatch().GetPrefix(), r.Action))
				case a.GetCluster() != "":
					actions = append(actions, r.GetMatch().GetPrefix()+"->"+a.GetCluster())
				case a.GetWeightedClusters() != nil:
					var ws []string
					for _, wc := range a.GetWeightedClusters().Clusters {
						ws = append(ws, fmt.Sprintf("%s:%d", wc.Name, wc.GetWeight().GetValue()))
					}
					actions = append(actions, r.GetMatch().GetPrefix()+"->weighted["+strings.Join(ws, ",")+"]")
				default:
					actions = append(actions, r.GetMatch().GetPrefix()+"->?")
				}
			}
			domains := vh.Domains
			if len(domains) > 8 {
				domains = append(domains[:8:8], fmt.Sprintf("...(%d more)", len(vh.Domains)-8))
			}
			out = append(out, fmt.Sprintf("      vhost %s domains %v routes %v", vh.Name, domains, actions))
		}
	}
	for _, c := range fake.Clusters(p) {
		if !strings.HasPrefix(c.Name, "outbound|") {
			out = append(out, fmt.Sprintf("CDS %s %s", c.Name, clusterType(c)))
			continue
		}
		out = append(out, fmt.Sprintf("CDS %s %s lb=%s", c.Name, clusterType(c), c.LbPolicy))
	}
	for _, cla := range fake.Endpoints(p) {
		var eps []string
		for _, le := range cla.Endpoints {
			for _, e := range le.LbEndpoints {
				sa := e.GetEndpoint().GetAddress().GetSocketAddress()
				eps = append(eps, fmt.Sprintf("%s:%d(%s,w=%d,prio=%d)", sa.GetAddress(), sa.GetPortValue(), e.HealthStatus, e.GetLoadBalancingWeight().GetValue(), le.Priority))
			}
		}
		out = append(out, fmt.Sprintf("EDS %s %v", cla.ClusterName, eps))
	}
	return out
}

func clusterType(c *clusterv3.Cluster) string {
	if c.GetType() != clusterv3.Cluster_STATIC || c.GetClusterType() == nil {
		return c.GetType().String()
	}
	return c.GetClusterType().GetName()
}

func chainSummary(fc *listenerv3.FilterChain) string {
	var parts []string
	if m := fc.FilterChainMatch; m != nil {
		var match []string
		for _, r := range m.PrefixRanges {
			match = append(match, fmt.Sprintf("dst=%s/%d", r.AddressPrefix, r.GetPrefixLen().GetValue()))
		}
		if m.DestinationPort != nil {
			match = append(match, fmt.Sprintf("port=%d", m.DestinationPort.GetValue()))
		}
		if m.TransportProtocol != "" {
			match = append(match, "transport="+m.TransportProtocol)
		}
		if len(m.ApplicationProtocols) > 0 {
			match = append(match, "alpn="+strings.Join(m.ApplicationProtocols, ","))
		}
		if len(m.ServerNames) > 0 {
			match = append(match, "sni="+strings.Join(m.ServerNames, ","))
		}
		parts = append(parts, "match{"+strings.Join(match, " ")+"}")
	}
	if fc.Name != "" {
		parts = append(parts, "name="+fc.Name)
	}
	for _, f := range fc.Filters {
		tc := f.GetTypedConfig()
		switch {
		case tc == nil:
			parts = append(parts, f.Name)
		case tc.MessageIs(&tcpv3.TcpProxy{}):
			var tp tcpv3.TcpProxy
			tc.UnmarshalTo(&tp)
			if w := tp.GetWeightedClusters(); w != nil {
				var ws []string
				for _, c := range w.Clusters {
					ws = append(ws, fmt.Sprintf("%s:%d", c.Name, c.Weight))
				}
				parts = append(parts, "tcp_proxy[weighted "+strings.Join(ws, ",")+"]")
			} else {
				parts = append(parts, "tcp_proxy["+tp.GetCluster()+"]")
			}
		case tc.MessageIs(&hcmv3.HttpConnectionManager{}):
			var h hcmv3.HttpConnectionManager
			tc.UnmarshalTo(&h)
			if r := h.GetRds(); r != nil {
				parts = append(parts, "hcm[rds "+r.RouteConfigName+"]")
			} else if rc := h.GetRouteConfig(); rc != nil {
				parts = append(parts, fmt.Sprintf("hcm[inline %s, %d vhosts]", rc.Name, len(rc.VirtualHosts)))
			} else {
				parts = append(parts, "hcm[?]")
			}
		default:
			parts = append(parts, f.Name)
		}
	}
	return strings.Join(parts, " ")
}

// workloadShapes describes the workload API (istio.workload.Address) resources istiod serves a
// ztunnel: every Service (VIPs, ports, waypoint) and Workload (IPs, services, status).
func workloadShapes(fake *xds.FakeDiscoveryServer) []string {
	addrs, _ := fake.Discovery.Env.AmbientIndexes.AddressInformation(nil)
	var out []string
	for _, a := range addrs {
		if s := a.GetService(); s != nil {
			var vips, ports []string
			for _, na := range s.Addresses {
				vips = append(vips, ipString(na.Address))
			}
			for _, p := range s.Ports {
				ports = append(ports, fmt.Sprintf("%d->%d(%s)", p.ServicePort, p.TargetPort, p.AppProtocol))
			}
			line := fmt.Sprintf("WDS service %s: vips %v ports %v", a.ResourceName(), vips, ports)
			if w := s.Waypoint; w != nil {
				line += " waypoint " + gatewayString(w)
			}
			if lb := s.LoadBalancing; lb != nil {
				line += " lb " + prototext.MarshalOptions{}.Format(lb)
			}
			out = append(out, line)
			continue
		}
		w := a.GetWorkload()
		if w == nil {
			out = append(out, "WDS ? "+a.ResourceName())
			continue
		}
		var ips, svcs []string
		for _, ip := range w.Addresses {
			ips = append(ips, ipString(ip))
		}
		for k, pl := range w.Services {
			var ps []string
			for _, p := range pl.Ports {
				ps = append(ps, fmt.Sprintf("%d->%d", p.ServicePort, p.TargetPort))
			}
			svcs = append(svcs, k+"["+strings.Join(ps, ",")+"]")
		}
		sort.Strings(svcs)
		line := fmt.Sprintf("WDS workload %s: ips %v node %q status %s mode %s services %v", w.Uid, ips, w.Node, w.Status, w.NetworkMode, svcs)
		if w.Waypoint != nil {
			line += " waypoint " + gatewayString(w.Waypoint)
		}
		out = append(out, line)
	}
	sort.Strings(out)
	return out
}

func ipString(b []byte) string {
	if a, ok := netip.AddrFromSlice(b); ok {
		return a.String()
	}
	return fmt.Sprintf("%x", b)
}

func gatewayString(g *workloadapi.GatewayAddress) string {
	switch {
	case g.GetHostname() != nil:
		return fmt.Sprintf("hostname %s/%s hbone %d", g.GetHostname().Namespace, g.GetHostname().Hostname, g.HboneMtlsPort)
	case g.GetAddress() != nil:
		return fmt.Sprintf("address %s hbone %d", ipString(g.GetAddress().Address), g.HboneMtlsPort)
	}
	return prototext.MarshalOptions{}.Format(g)
}
