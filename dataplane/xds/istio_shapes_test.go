package xds

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// vhost is a virtual host as istiod writes one per service and port: host names, the VIP bare
// and with the port, one catch-all route.
func vhost(name, cluster string, domains ...string) *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{
		{Name: "default", Match: prefixMatch("/"), Action: toCluster(cluster)}}}
}

// istioHTTPPort is istiod's shape for an HTTP port: a 0.0.0.0_<port> listener whose one chain
// has no destination prefix ranges, and a route configuration named after the port whose
// virtual hosts name the VIPs in their domains, with an allow_any "*" host to passthrough.
func istioHTTPPort(vhs ...*routev3.VirtualHost) (*listenerv3.Listener, *routev3.RouteConfiguration) {
	l := listener("0.0.0.0_8080", "0.0.0.0", 8080, chain("", hcmRDS("8080")))
	rc := &routev3.RouteConfiguration{Name: "8080", VirtualHosts: append(vhs,
		vhost("allow_any", "PassthroughCluster", "*"))}
	return l, rc
}

func TestTranslateIstioShapes(t *testing.T) {
	webC, apiC := edsCluster("outbound|8080||web.ns.svc.cluster.local", rr), edsCluster("outbound|8080||api.ns.svc.cluster.local", rr)
	webE := cla(webC.Name, ep{addr: "10.1.0.1:8080"})
	apiE := cla(apiC.Name, ep{addr: "10.1.0.2:9090"})
	webSvc := func(vip string) model.Service {
		return svc(vip, webC.Name, model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 1)})
	}
	apiSvc := func(vip string) model.Service {
		return svc(vip, apiC.Name, model.RoundRobin, []model.Endpoint{mep("10.1.0.2:9090", 1)})
	}
	tests := []struct {
		name      string
		state     State
		want      model.Config
		waypoints []string // services reported as needing a waypoint
	}{
		{
			name: "HTTP port: VIPs from virtual host domains, bare or with the port; * and host names ignored",
			state: func() State {
				l, rc := istioHTTPPort(
					vhost("web.ns.svc.cluster.local:8080", webC.Name, "web.ns.svc.cluster.local", "web", "web.ns", "10.96.0.10", "10.96.0.10:8080"),
					vhost("api.ns.svc.cluster.local:8080", apiC.Name, "api.ns.svc.cluster.local", "10.96.0.11:8080", "[fd00::11]:8080", "10.96.0.99:9999"))
				return state(l, rc, webC, apiC, webE, apiE)
			}(),
			want: config(webSvc("10.96.0.10:8080"), apiSvc("10.96.0.11:8080"), svc("[fd00::11]:8080", apiC.Name, model.RoundRobin)),
		},
		{
			name: "a chain naming the VIP wins over a route domain naming it",
			state: func() State {
				l, rc := istioHTTPPort(vhost("web", webC.Name, "10.96.0.10"))
				vip := listener("10.96.0.10_8080", "10.96.0.10", 8080, chain("", tcpProxy(apiC.Name)))
				return state(l, vip, rc, webC, apiC, webE, apiE)
			}(),
			want: config(apiSvc("10.96.0.10:8080")),
		},
		{
			name: "protocol sniffing: an HTTP chain (ALPN) and a TCP chain on one VIP:port are not duplicates",
			state: func() State {
				http := chain("http", hcmInline(&routev3.RouteConfiguration{Name: "in", VirtualHosts: []*routev3.VirtualHost{vhost("w", webC.Name, "*")}}))
				http.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1", "h2c"}}
				tcp := chain("tcp", tcpProxy(webC.Name))
				tcp.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer"}
				return state(listener("10.96.0.10_8080", "10.96.0.10", 8080, http, tcp), webC, webE)
			}(),
			want: config(webSvc("10.96.0.10:8080")),
		},
		{
			name: "routes by path to other clusters: balanced by the catch-all, reported as needing a waypoint",
			state: func() State {
				vh := vhost("web", webC.Name, "10.96.0.10")
				vh.Routes = append([]*routev3.Route{{Name: "api", Match: prefixMatch("/api"), Action: toCluster(apiC.Name)},
					{Name: "same", Match: prefixMatch("/static"), Action: toCluster(webC.Name)}}, vh.Routes...)
				l, rc := istioHTTPPort(vh)
				return state(l, rc, webC, apiC, webE, apiE)
			}(),
			want:      config(webSvc("10.96.0.10:8080")),
			waypoints: []string{"10.96.0.10:8080"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tr Translator
			got, err := tr.Translate(&tc.state)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Translate =\n%s\nwant\n%s", dump(got), dump(tc.want))
			}
			var way []string
			for _, is := range tr.Report().NeedsWaypoint {
				way = append(way, is.Service)
				if !strings.Contains(is.Reason, "waypoint") || !strings.Contains(is.Reason, `"api"`) {
					t.Errorf("waypoint reason %q does not name the route and the remedy", is.Reason)
				}
			}
			if !reflect.DeepEqual(way, tc.waypoints) {
				t.Errorf("needs waypoint %v, want %v", way, tc.waypoints)
			}
		})
	}
}

// One service that cannot be programmed leaves the others programmed: Translate returns their
// config with a RejectedError naming the bad one, which keeps its previous version if it had one.
func TestTranslatePartialAcceptance(t *testing.T) {
	good := listener("web", "10.96.0.10", 80, chain("", tcpProxy("web")))
	bad := listener("bad", "10.96.0.20", 80, chain("", tcpProxy("nope")))
	udp := listener("dns", "10.96.0.53", 53, chain("", tcpProxy("web")))
	udp.Address.GetSocketAddress().Protocol = 1 // UDP
	s := state(good, bad, udp, edsCluster("web", rr), cla("web", ep{addr: "10.1.0.1:80"}))
	webWant := svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:80", 1)})

	var tr Translator
	got, err := tr.Translate(&s)
	var rej *RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("Translate error = %v, want a *RejectedError", err)
	}
	if !reflect.DeepEqual(got, config(webWant)) {
		t.Fatalf("Translate =\n%s\nwant only web", dump(got))
	}
	if len(rej.Issues) != 2 || !strings.Contains(err.Error(), `cluster "nope" not found`) || !strings.Contains(err.Error(), "UDP") {
		t.Fatalf("rejected %+v, want the unknown cluster of 10.96.0.20:80 and the UDP listener", rej.Issues)
	}
	r := tr.Report()
	if len(r.Rejected) != 2 || r.Rejected[0].Resource != `listener "dns"` || r.Rejected[1].Service != "10.96.0.20:80" || r.Rejected[1].Kept {
		t.Fatalf("report %+v", r.Rejected)
	}

	// With a previous version, the rejected service keeps it.
	prev := svc("10.96.0.20:80", "bad", model.Random, []model.Endpoint{mep("10.1.9.9:80", 1)})
	s.Previous = config(webWant, prev)
	got, _ = tr.Translate(&s)
	if !reflect.DeepEqual(got, config(webWant, prev)) {
		t.Fatalf("Translate with a previous version =\n%s", dump(got))
	}
	if r := tr.Report(); !r.Rejected[1].Kept || !strings.Contains(err.Error(), "services not programmed") {
		t.Fatalf("report %+v: want the previous version kept", r.Rejected)
	}
}
