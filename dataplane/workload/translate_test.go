package workload

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/dataplane/model"
	wapi "github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

const (
	echo   = "demo/echo.demo.svc.cluster.local"
	other  = "demo/other.demo.svc.cluster.local"
	wayptS = "demo/waypoint.demo.svc.cluster.local"
)

func TestTranslate(t *testing.T) {
	tests := []struct {
		name   string
		res    resources
		opts   Options
		want   map[string]model.Service
		issues []string // substrings, one per issue expected (resource: reason)
	}{{
		name: "endpoints are the workloads naming the service",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 9090))).
			add(workload("c/Pod/demo/echo-1", ips("10.244.1.5"), of(echo))).
			add(workload("c/Pod/demo/echo-2", ips("10.244.2.6"), of(echo))).
			add(workload("c/Pod/demo/other-1", ips("10.244.1.7"), of(other))).
			add(workload("c/Pod/demo/both", ips("10.244.2.8"), of(echo), of(other))).
			add(workload("c/Pod/demo/none", ips("10.244.2.9"))),
		want: map[string]model.Service{
			"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.2.6:8080", 1), ep("10.244.2.8:8080", 1)),
			"10.96.0.11:80": fe(other, ep("10.244.1.7:9090", 1), ep("10.244.2.8:9090", 1)),
		},
	}, {
		name: "target ports: the workload's, else the service's; 0 is a named port the workload must resolve",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080, 443, 0, 90, 9090))).
			add(workload("c/Pod/demo/override", ips("10.244.1.5"), of(echo, 80, 8081, 443, 8443))).
			add(workload("c/Pod/demo/plain", ips("10.244.1.6"), of(echo))).
			add(workload("c/Pod/demo/zero", ips("10.244.1.7"), of(echo, 80, 0, 443, 0))),
		want: map[string]model.Service{
			"10.96.0.10:80":  fe(echo, ep("10.244.1.5:8081", 1), ep("10.244.1.6:8080", 1), ep("10.244.1.7:8080", 1)),
			"10.96.0.10:443": fe(echo, ep("10.244.1.5:8443", 1)),
			"10.96.0.10:90":  fe(echo, ep("10.244.1.5:9090", 1), ep("10.244.1.6:9090", 1), ep("10.244.1.7:9090", 1)),
		},
	}, {
		name: "dual stack: each VIP balances over its family's addresses",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10", "fd00:10:96::a"), ports(80, 8080))).
			add(workload("c/Pod/demo/dual", ips("10.244.1.5", "fd00:10:244:1::5"), of(echo))).
			add(workload("c/Pod/demo/v4", ips("10.244.1.6"), of(echo))).
			add(workload("c/Pod/demo/v6", ips("fd00:10:244:1::7"), of(echo))),
		want: map[string]model.Service{
			"10.96.0.10:80":      fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 1)),
			"[fd00:10:96::a]:80": fe(echo, ep("[fd00:10:244:1::5]:8080", 1), ep("[fd00:10:244:1::7]:8080", 1)),
		},
	}, {
		name: "unhealthy workloads are left out, unless the service allows all",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 8080), allowAll())).
			add(workload("c/Pod/demo/ok", ips("10.244.1.5"), of(echo), of(other))).
			add(workload("c/Pod/demo/sick", ips("10.244.1.6"), of(echo), of(other), unhealthy())),
		want: map[string]model.Service{
			"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1)),
			"10.96.0.11:80": fe(other, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 1)),
		},
	}, {
		name: "capacity is the weight: unset 1, 0 no traffic, over the limit clamped",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))).
			add(workload("c/Pod/demo/one", ips("10.244.1.5"), of(echo))).
			add(workload("c/Pod/demo/three", ips("10.244.1.6"), of(echo), capacity(3))).
			add(workload("c/Pod/demo/zero", ips("10.244.1.7"), of(echo), capacity(0))).
			add(workload("c/Pod/demo/huge", ips("10.244.1.8"), of(echo), capacity(model.MaxWeight+1))),
		want: map[string]model.Service{
			"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 3), ep("10.244.1.8:8080", model.MaxWeight)),
		},
		issues: []string{"c/Pod/demo/huge: capacity 1048577 over 1048576"},
	}, {
		name: "a service without endpoints is programmed empty",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080, 81, 8081))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 8080))).
			add(workload("c/Pod/demo/sick", ips("10.244.1.6"), of(other), unhealthy())),
		want: map[string]model.Service{
			"10.96.0.10:80": fe(echo),
			"10.96.0.10:81": fe(echo),
			"10.96.0.11:80": fe(other),
		},
	}, {
		name: "a port listed twice (TCP and UDP 53 of kube-dns) is one frontend; with other target ports, reported",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(53, 53, 53, 53))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(53, 53, 53, 5353))),
		want: map[string]model.Service{
			"10.96.0.10:53": fe(echo),
			"10.96.0.11:53": fe(other),
		},
		issues: []string{"demo/other.demo.svc.cluster.local: service port 53 listed twice with different target ports"},
	}, {
		name: "headless services and hostname-only workloads program nothing",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", ports(80, 8080))).
			add(workload("c/Pod/demo/dns", of(echo), func(w *wapi.Workload) { w.Hostname = "db.example.com" })),
		want:   map[string]model.Service{},
		issues: []string{"c/Pod/demo/dns: workload has a hostname (db.example.com) and no address"},
	}, {
		name: "waypoint by address: steered to it on the service port, or on hbone_mtls_port",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080, 443, 8443), waypointAddr("10.96.0.99", 0))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 8080), waypointAddr("10.96.0.99", 15008))).
			add(workload("c/Pod/demo/echo-1", ips("10.244.1.5"), of(echo), of(other))),
		want: map[string]model.Service{
			"10.96.0.10:80":  fe(echo, ep("10.96.0.99:80", 1)),
			"10.96.0.10:443": fe(echo, ep("10.96.0.99:443", 1)),
			"10.96.0.11:80":  fe(other, ep("10.96.0.99:15008", 1)),
		},
	}, {
		name: "waypoint by hostname: balanced over the waypoint service's pods at the HBONE port (one hop)",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10", "fd00:10:96::a"), ports(80, 8080), waypointHost("demo", "waypoint.demo.svc.cluster.local", 15008))).
			add(service("demo", "waypoint.demo.svc.cluster.local", vips("fd00:10:96::99", "10.96.0.99", "10.96.0.98"), ports(15008, 15008))).
			add(workload("c/Pod/demo/waypoint-1", ips("10.244.1.9", "fd00:10:244:1::9"), of(wayptS))).
			add(workload("c/Pod/demo/echo-1", ips("10.244.1.5", "fd00:10:244:1::5"), of(echo))),
		want: map[string]model.Service{
			"10.96.0.10:80":          fe(echo, ep("10.244.1.9:15008", 1)),
			"[fd00:10:96::a]:80":     fe(echo, ep("[fd00:10:244:1::9]:15008", 1)),
			"10.96.0.99:15008":       fe(wayptS, ep("10.244.1.9:15008", 1)),
			"10.96.0.98:15008":       fe(wayptS, ep("10.244.1.9:15008", 1)),
			"[fd00:10:96::99]:15008": fe(wayptS, ep("[fd00:10:244:1::9]:15008", 1)),
		},
	}, {
		name: "an unresolvable waypoint keeps the service (or the VIP) out, with the reason",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080), waypointHost("demo", "missing.demo.svc.cluster.local", 0))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11", "fd00:10:96::b"), ports(80, 8080), waypointHost("demo", "waypoint.demo.svc.cluster.local", 0))).
			add(service("demo", "waypoint.demo.svc.cluster.local", vips("10.96.0.99"), ports(15008, 15008))).
			add(service("demo", "self.demo.svc.cluster.local", vips("10.96.0.12"), ports(80, 8080), waypointAddr("10.96.0.12", 0))).
			add(service("demo", "v6wp.demo.svc.cluster.local", vips("10.96.0.13"), ports(80, 8080), waypointAddr("fd00::1", 0))).
			add(workload("c/Pod/demo/echo-1", ips("10.244.1.5", "fd00:10:244:1::5"), of(echo), of(other))),
		want: map[string]model.Service{
			"10.96.0.11:80":    fe(other), // the waypoint has no pods: refused
			"10.96.0.99:15008": fe(wayptS),
		},
		issues: []string{
			echo + " (10.96.0.10:80): waypoint service demo/missing.demo.svc.cluster.local is unknown",
			other + " ([fd00:10:96::b]:80): waypoint service " + wayptS + " has no IPv6 VIP",
			"demo/self.demo.svc.cluster.local (10.96.0.12:80): the service is its own waypoint",
			"demo/v6wp.demo.svc.cluster.local (10.96.0.13:80): waypoint address fd00::1 is not IPv4",
		},
	}, {
		name: "malformed addresses are reported and the rest is programmed",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", rawVIP([]byte{10, 96, 0}), vips("10.96.0.10"), ports(80, 8080))).
			add(service("demo", "other.demo.svc.cluster.local", rawVIP([]byte{1, 2, 3, 4, 5}), ports(80, 8080))).
			add(service("demo", "noports.demo.svc.cluster.local", vips("10.96.0.12"))).
			add(workload("c/Pod/demo/echo-1", rawIP([]byte{10, 244, 1}), ips("10.244.1.5"), of(echo))).
			add(workload("c/Pod/demo/echo-2", ips("10.244.1.6"), of(echo))),
		want: map[string]model.Service{
			"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1), ep("10.244.1.6:8080", 1)),
		},
		issues: []string{
			"c/Pod/demo/echo-1: workload address of 3 bytes",
			"demo/echo.demo.svc.cluster.local: service address of 3 bytes",
			"demo/noports.demo.svc.cluster.local: service has no ports",
			"demo/other.demo.svc.cluster.local: service address of 5 bytes",
		},
	}, {
		name: "refused resources are reported, the others programmed",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))).
			add("demo/wrong-name", func() *wapi.Address {
				_, a := service("demo", "x.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 80))
				return a
			}()).
			add("empty", &wapi.Address{}),
		want: map[string]model.Service{"10.96.0.10:80": fe(echo)},
		issues: []string{
			`demo/wrong-name: service resource must be named "demo/x.demo.svc.cluster.local"`,
			"empty: address holds neither a workload nor a service",
		},
	}, {
		name: "a frontend two services claim goes to the smaller name",
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))).
			add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 9090, 81, 9091))),
		want: map[string]model.Service{
			"10.96.0.10:80": fe(echo),
			"10.96.0.10:81": fe(other),
		},
		issues: []string{other + " (10.96.0.10:80): frontend also belongs to service " + echo},
	}, {
		name: "the node's network only",
		opts: Options{Network: "net1"},
		res: resources{}.
			add(service("demo", "echo.demo.svc.cluster.local", func(s *wapi.Service) {
				s.Addresses = []*wapi.NetworkAddress{
					{Network: "net2", Address: netip.MustParseAddr("10.97.0.10").AsSlice()},
					{Network: "net1", Address: netip.MustParseAddr("10.96.0.10").AsSlice()},
				}
			}, ports(80, 8080))).
			add(workload("c/Pod/demo/here", ips("10.244.1.5"), of(echo), func(w *wapi.Workload) { w.Network = "net1" })).
			add(workload("c/Pod/demo/there", ips("10.245.1.5"), of(echo), func(w *wapi.Workload) { w.Network = "net2" })),
		want: map[string]model.Service{"10.96.0.10:80": fe(echo, ep("10.244.1.5:8080", 1))},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Translate(tc.res, tc.opts)
			assertConfig(t, r.Config, tc.want)
			var got []string
			for _, is := range r.Issues {
				got = append(got, is.String())
			}
			if len(got) != len(tc.issues) {
				t.Errorf("issues:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(tc.issues, "\n  "))
				return
			}
			for _, want := range tc.issues {
				if !slices.ContainsFunc(got, func(g string) bool { return strings.Contains(g, want) }) {
					t.Errorf("no issue %q in:\n  %s", want, strings.Join(got, "\n  "))
				}
			}
			if len(r.Changed) != len(r.Config.Services) {
				t.Errorf("first translation: changed %d, want every frontend (%d)", len(r.Changed), len(r.Config.Services))
			}
		})
	}
}

func TestTooManyEndpoints(t *testing.T) {
	res := resources{}.
		add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10", "fd00:10:96::a"), ports(80, 8080))).
		add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 8080)))
	for i := range model.MaxSlots + 1 {
		res.add(workload(fmt.Sprintf("c/Pod/demo/echo-%d", i), ips(netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).String()), of(echo)))
	}
	res.add(workload("c/Pod/demo/v6", ips("fd00:10:244::1"), of(echo)))
	res.add(workload("c/Pod/demo/other", ips("10.245.0.1"), of(other)))
	r := Translate(res, Options{})
	assertConfig(t, r.Config, map[string]model.Service{
		"[fd00:10:96::a]:80": fe(echo, ep("[fd00:10:244::1]:8080", 1)),
		"10.96.0.11:80":      fe(other, ep("10.245.0.1:8080", 1)),
	})
	if len(r.Issues) != 1 || r.Issues[0].Frontend != netip.MustParseAddrPort("10.96.0.10:80") || !strings.Contains(r.Issues[0].Reason, "1025 endpoints") {
		t.Errorf("issues %v", r.Issues)
	}
}

func TestIdentity(t *testing.T) {
	res := resources{}.
		add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10", "fd00:10:96::a"), ports(80, 8080), waypointAddr("10.96.0.99", 0))).
		add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 8080))).
		add(workload("Kubernetes//Pod/demo/echo-1", ips("10.244.1.5", "fd00:10:244:1::5"), of(echo), func(w *wapi.Workload) {
			w.WorkloadName, w.ServiceAccount, w.CanonicalName, w.CanonicalRevision = "echo", "echo-sa", "echo-app", "v2"
			w.TrustDomain, w.ClusterId, w.Node = "lab.local", "Kubernetes", "n2"
		})).
		add(workload("Kubernetes//Pod/demo/unnamed", ips("10.244.1.6"))).
		add(workload("Kubernetes//Pod/kube-system/hostnet", ips("172.30.0.2"), hostNetwork()))
	r := Translate(res, Options{})
	want := WorkloadIdentity{UID: "Kubernetes//Pod/demo/echo-1", Namespace: "demo", WorkloadName: "echo", ServiceAccount: "echo-sa",
		CanonicalName: "echo-app", CanonicalRevision: "v2", TrustDomain: "lab.local", ClusterID: "Kubernetes", Node: "n2"}
	for _, ip := range []string{"10.244.1.5", "fd00:10:244:1::5", "::ffff:10.244.1.5"} {
		if got, ok := r.Identity(netip.MustParseAddr(ip)); !ok || got != want {
			t.Errorf("Identity(%s) = %+v %v, want %+v", ip, got, ok, want)
		}
	}
	if got, ok := r.Identity(netip.MustParseAddr("10.244.1.6")); !ok || got.WorkloadName != "unnamed" {
		t.Errorf("no workload_name: the name stands in; got %+v", got)
	}
	if _, ok := r.Identity(netip.MustParseAddr("172.30.0.2")); ok {
		t.Error("a host-network workload must not be found by its (shared) IP")
	}
	if _, ok := r.Identity(netip.MustParseAddr("10.244.9.9")); ok {
		t.Error("unknown IP found")
	}
	if got, ok := r.ServiceByVIP(netip.MustParseAddr("fd00:10:96::a")); !ok || got != (ServiceIdentity{Namespace: "demo", Name: "echo", Hostname: "echo.demo.svc.cluster.local"}) {
		t.Errorf("ServiceByVIP(v6) = %+v %v (the IPv6 VIP's waypoint is IPv4: not steered)", got, ok)
	}
	if got, ok := r.ServiceByVIP(netip.MustParseAddr("10.96.0.10")); !ok || !got.Waypoint {
		t.Errorf("ServiceByVIP(v4) = %+v %v, want steered to the waypoint", got, ok)
	}
	if got, ok := r.ServiceByVIP(netip.MustParseAddr("10.96.0.11")); !ok || got.Name != "other" || got.Waypoint {
		t.Errorf("ServiceByVIP(other) = %+v %v", got, ok)
	}
}

func TestServicesStatus(t *testing.T) {
	s := NewState(Options{})
	res := resources{}.
		add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080), waypointAddr("10.96.0.99", 0))).
		add(service("demo", "other.demo.svc.cluster.local", vips("10.96.0.11"), ports(80, 8080))).
		add(service("demo", "headless.demo.svc.cluster.local", ports(80, 8080))).
		add(service("demo", "broken.demo.svc.cluster.local", vips("10.96.0.12"), ports(80, 8080), waypointHost("demo", "nope", 0))).
		add(workload("w1", ips("10.244.1.5"), of(other)))
	for name, a := range res {
		if err := s.Update(name, a); err != nil {
			t.Fatal(err)
		}
	}
	s.Translate()
	got := map[string]ServiceStatus{}
	for _, st := range s.Services() {
		got[st.Name] = st
	}
	if st := got[echo]; !st.Waypoint || len(st.Programmed) != 1 || st.Programmed[0].Waypoint != netip.MustParseAddrPort("10.96.0.99:80") {
		t.Errorf("echo: %+v", st)
	}
	if st := got[other]; st.Waypoint || len(st.Programmed) != 1 || st.Programmed[0].Endpoints != 1 {
		t.Errorf("other: %+v", st)
	}
	if st := got["demo/headless.demo.svc.cluster.local"]; !st.Headless || len(st.Programmed) != 0 {
		t.Errorf("headless: %+v", st)
	}
	if st := got["demo/broken.demo.svc.cluster.local"]; len(st.Programmed) != 0 || len(st.Issues) != 1 {
		t.Errorf("broken: %+v", st)
	}
	if sum := s.Summary(); sum != (Summary{Services: 4, Workloads: 1, Frontends: 2, Steered: 1, Issues: 1}) {
		t.Errorf("summary %+v", sum)
	}
}
