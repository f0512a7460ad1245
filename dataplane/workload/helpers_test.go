package workload

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/onehop-mesh/onehop/dataplane/model"
	wapi "github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// Builders for Address resources, named as Istio names them.

type svcOpt func(*wapi.Service)

func service(ns, host string, opts ...svcOpt) (string, *wapi.Address) {
	s := &wapi.Service{Name: strings.Split(host, ".")[0], Namespace: ns, Hostname: host}
	for _, o := range opts {
		o(s)
	}
	return ns + "/" + host, &wapi.Address{Type: &wapi.Address_Service{Service: s}}
}

func vips(ips ...string) svcOpt {
	return func(s *wapi.Service) {
		for _, ip := range ips {
			s.Addresses = append(s.Addresses, &wapi.NetworkAddress{Address: netip.MustParseAddr(ip).AsSlice()})
		}
	}
}

func rawVIP(b []byte) svcOpt {
	return func(s *wapi.Service) { s.Addresses = append(s.Addresses, &wapi.NetworkAddress{Address: b}) }
}

// ports takes service_port:target_port pairs.
func ports(pairs ...uint32) svcOpt {
	return func(s *wapi.Service) {
		for i := 0; i+1 < len(pairs); i += 2 {
			s.Ports = append(s.Ports, &wapi.Port{ServicePort: pairs[i], TargetPort: pairs[i+1]})
		}
	}
}

func allowAll() svcOpt {
	return func(s *wapi.Service) {
		s.LoadBalancing = &wapi.LoadBalancing{HealthPolicy: wapi.LoadBalancing_ALLOW_ALL}
	}
}

func waypointAddr(ip string, hbone uint32) svcOpt {
	return func(s *wapi.Service) {
		s.Waypoint = &wapi.GatewayAddress{
			Destination:   &wapi.GatewayAddress_Address{Address: &wapi.NetworkAddress{Address: netip.MustParseAddr(ip).AsSlice()}},
			HboneMtlsPort: hbone,
		}
	}
}

func waypointHost(ns, host string, hbone uint32) svcOpt {
	return func(s *wapi.Service) {
		s.Waypoint = &wapi.GatewayAddress{
			Destination:   &wapi.GatewayAddress_Hostname{Hostname: &wapi.NamespacedHostname{Namespace: ns, Hostname: host}},
			HboneMtlsPort: hbone,
		}
	}
}

type wlOpt func(*wapi.Workload)

func workload(uid string, opts ...wlOpt) (string, *wapi.Address) {
	parts := strings.Split(uid, "/")
	w := &wapi.Workload{Uid: uid, Name: parts[len(parts)-1], Namespace: "demo", ServiceAccount: "default", Node: "n1"}
	for _, o := range opts {
		o(w)
	}
	return uid, &wapi.Address{Type: &wapi.Address_Workload{Workload: w}}
}

func ips(ips ...string) wlOpt {
	return func(w *wapi.Workload) {
		for _, ip := range ips {
			w.Addresses = append(w.Addresses, netip.MustParseAddr(ip).AsSlice())
		}
	}
}

func rawIP(b []byte) wlOpt {
	return func(w *wapi.Workload) { w.Addresses = append(w.Addresses, b) }
}

// of makes the workload an endpoint of service key ("namespace/hostname"), with optional
// service_port:target_port overrides.
func of(key string, pairs ...uint32) wlOpt {
	return func(w *wapi.Workload) {
		if w.Services == nil {
			w.Services = map[string]*wapi.PortList{}
		}
		pl := &wapi.PortList{}
		for i := 0; i+1 < len(pairs); i += 2 {
			pl.Ports = append(pl.Ports, &wapi.Port{ServicePort: pairs[i], TargetPort: pairs[i+1]})
		}
		w.Services[key] = pl
	}
}

func unhealthy() wlOpt { return func(w *wapi.Workload) { w.Status = wapi.WorkloadStatus_UNHEALTHY } }

func capacity(c uint32) wlOpt { return func(w *wapi.Workload) { w.Capacity = wrapperspb.UInt32(c) } }

func hostNetwork() wlOpt {
	return func(w *wapi.Workload) { w.NetworkMode = wapi.NetworkMode_HOST_NETWORK }
}

type resources map[string]*wapi.Address

func (r resources) add(name string, a *wapi.Address) resources {
	r[name] = a
	return r
}

func key(vipPort string) model.Key {
	ap := netip.MustParseAddrPort(vipPort)
	return model.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: model.TCP}
}

func ep(addrPort string, w uint32) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddrPort(addrPort), Weight: w}
}

// fe is an expected frontend: its endpoints (none: programmed empty).
func fe(name string, eps ...model.Endpoint) model.Service {
	s := model.Service{Name: name, Policy: model.Random}
	if len(eps) > 0 {
		s.Priorities = [][]model.Endpoint{eps}
	}
	return s
}

func dump(cfg model.Config) string {
	var b strings.Builder
	for _, k := range slices.SortedFunc(maps.Keys(cfg.Services), compareKeys) {
		s := cfg.Services[k]
		fmt.Fprintf(&b, "  %s %s %v:", k, s.Name, s.Policy)
		for p, eps := range s.Priorities {
			fmt.Fprintf(&b, " p%d[", p)
			for i, e := range eps {
				if i > 0 {
					b.WriteString(" ")
				}
				fmt.Fprintf(&b, "%s*%d", e.Addr, e.Weight)
			}
			b.WriteString("]")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func assertConfig(t *testing.T, got model.Config, want map[string]model.Service) {
	t.Helper()
	w := model.Config{Services: map[model.Key]model.Service{}}
	for k, s := range want {
		s.Key = key(k)
		w.Services[s.Key] = s
	}
	if !maps.EqualFunc(got.Services, w.Services, sameService) {
		t.Errorf("config:\n%swant:\n%s", dump(got), dump(w))
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
