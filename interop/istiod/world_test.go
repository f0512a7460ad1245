package istiod

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// The cluster the tests run: what a small real cluster holds (the kubernetes and kube-dns
// services, an app namespace with HTTP, TCP, sniffed, multi-port and endpoint-less services, a
// round-robin DestinationRule, a weighted TCP VirtualService, a ServiceEntry for VMs, a
// namespace-private service in another team's namespace, an ambient waypoint), on lab pods.
//
// Service VIPs are fixed, from 10.96.128.0/17: the lab allocates its own services' VIPs from
// the bottom of 10.96.0.0/16, and this lab has none (every service comes from istiod).
const (
	vipKubernetes = "10.96.128.1"
	vipKubeDNS    = "10.96.128.10"
	vipWeb        = "10.96.130.10"
	vipDB         = "10.96.130.11"
	vipSniff      = "10.96.130.12"
	vipMulti      = "10.96.130.13"
	vipEmpty      = "10.96.130.14"
	vipRR         = "10.96.130.15"
	vipSplit      = "10.96.130.16"
	vipReviews    = "10.96.130.17"
	vipWaypoint   = "10.96.130.18"
	vipFresh      = "10.96.130.40"
	vipPrivate    = "10.96.131.10"
	vipLegacy     = "10.96.200.10" // the ServiceEntry's address
	vipUnknown    = "10.96.130.99" // no service's
)

// agentNamespace is the namespace the agent's DaemonSet runs in (its sidecar scope in istiod).
const agentNamespace = "istio-system"

func app(name string, more ...string) map[string]string {
	m := map[string]string{"app": name}
	for i := 0; i+1 < len(more); i += 2 {
		m[more[i]] = more[i+1]
	}
	return m
}

// worldPods are the lab's pods: the client on n1, servers over n1 and n2.
func worldPods() []podDef {
	return []podDef{
		{Name: "client", Namespace: "shop", Node: "n1", Labels: app("client")},
		{Name: "apiserver", Namespace: "default", Node: "n2", Serve: []int{6443}, NotInKube: true},
		{Name: "coredns-1", Namespace: "kube-system", Node: "n1", Labels: map[string]string{"k8s-app": "kube-dns"}, SA: "coredns", Serve: []int{53, 9153}},
		{Name: "coredns-2", Namespace: "kube-system", Node: "n2", Labels: map[string]string{"k8s-app": "kube-dns"}, SA: "coredns", Serve: []int{53, 9153}},
		{Name: "web-1", Namespace: "shop", Node: "n1", Labels: app("web"), Serve: []int{8080}},
		{Name: "web-2", Namespace: "shop", Node: "n2", Labels: app("web"), Serve: []int{8080}},
		{Name: "db-1", Namespace: "shop", Node: "n1", Labels: app("db"), Serve: []int{5432}},
		{Name: "db-2", Namespace: "shop", Node: "n2", Labels: app("db"), Serve: []int{5432}},
		{Name: "sniff-1", Namespace: "shop", Node: "n1", Labels: app("sniff"), Serve: []int{7000}},
		{Name: "sniff-2", Namespace: "shop", Node: "n2", Labels: app("sniff"), Serve: []int{7000}},
		{Name: "multi-1", Namespace: "shop", Node: "n1", Labels: app("multi"), Serve: []int{8080, 9090, 6379}},
		{Name: "multi-2", Namespace: "shop", Node: "n2", Labels: app("multi"), Serve: []int{8080, 9090, 6379}},
		{Name: "rr-1", Namespace: "shop", Node: "n1", Labels: app("rr"), Serve: []int{7070}},
		{Name: "rr-2", Namespace: "shop", Node: "n2", Labels: app("rr"), Serve: []int{7070}},
		{Name: "rr-3", Namespace: "shop", Node: "n1", Labels: app("rr"), Serve: []int{7070}},
		{Name: "split-v1", Namespace: "shop", Node: "n1", Labels: app("split", "version", "v1"), Serve: []int{7100}},
		{Name: "split-v2", Namespace: "shop", Node: "n2", Labels: app("split", "version", "v2"), Serve: []int{7100}},
		{Name: "reviews-1", Namespace: "shop", Node: "n1", Labels: app("reviews"), Serve: []int{9080}},
		{Name: "reviews-2", Namespace: "shop", Node: "n2", Labels: app("reviews"), Serve: []int{9080}},
		// The waypoint's pod answers on its HBONE port and on the service port it fronts, so a
		// connection steered to it lands whichever port the agent picks (the log says which).
		{Name: "waypoint-1", Namespace: "shop", Node: "n2", SA: "waypoint",
			Labels: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/gateway-name": "waypoint"},
			Serve:  []int{15008, 9080}},
		{Name: "legacy-1", Namespace: "shop", Node: "n1", Serve: []int{8000}, NotInKube: true}, // VMs behind a ServiceEntry
		{Name: "legacy-2", Namespace: "shop", Node: "n2", Serve: []int{8000}, NotInKube: true},
		{Name: "private-1", Namespace: "team", Node: "n2", Labels: app("private"), Serve: []int{8443}},
		{Name: "fresh-1", Namespace: "shop", Node: "n2", Labels: app("fresh"), Serve: []int{8088}},
	}
}

// worldServices are the Kubernetes Services.
func worldServices() []svcDef {
	return []svcDef{
		{Name: "kubernetes", Namespace: "default", VIP: vipKubernetes,
			Labels:    map[string]string{"component": "apiserver", "provider": "kubernetes"},
			Ports:     []portDef{{Name: "https", Port: 443, Target: 6443}},
			Addresses: []string{"apiserver"}},
		{Name: "kube-dns", Namespace: "kube-system", VIP: vipKubeDNS,
			Labels:      map[string]string{"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "CoreDNS"},
			Annotations: map[string]string{"prometheus.io/port": "9153", "prometheus.io/scrape": "true"},
			Selector:    map[string]string{"k8s-app": "kube-dns"},
			Ports: []portDef{{Name: "dns", Port: 53, Target: 53, Protocol: corev1.ProtocolUDP},
				{Name: "dns-tcp", Port: 53, Target: 53}, {Name: "metrics", Port: 9153, Target: 9153}}},
		{Name: "web", Namespace: "shop", VIP: vipWeb, Selector: app("web"), Ports: []portDef{{Name: "http", Port: 80, Target: 8080}}},
		{Name: "db", Namespace: "shop", VIP: vipDB, Selector: app("db"), Ports: []portDef{{Name: "tcp", Port: 5432, Target: 5432}}},
		{Name: "sniff", Namespace: "shop", VIP: vipSniff, Selector: app("sniff"), Ports: []portDef{{Port: 7000, Target: 7000}}},
		{Name: "multi", Namespace: "shop", VIP: vipMulti, Selector: app("multi"), Ports: []portDef{
			{Name: "http", Port: 80, Target: 8080}, {Name: "grpc", Port: 9090, Target: 9090}, {Name: "tcp-redis", Port: 6379, Target: 6379}}},
		{Name: "empty", Namespace: "shop", VIP: vipEmpty, Selector: app("nothing"), Ports: []portDef{
			{Name: "http", Port: 80, Target: 8080}, {Name: "tcp", Port: 9000, Target: 9000}}},
		{Name: "rr", Namespace: "shop", VIP: vipRR, Selector: app("rr"), Ports: []portDef{{Name: "tcp", Port: 7070, Target: 7070}}},
		{Name: "split", Namespace: "shop", VIP: vipSplit, Selector: app("split"), Ports: []portDef{{Name: "tcp", Port: 7100, Target: 7100}}},
		{Name: "reviews", Namespace: "shop", VIP: vipReviews, Selector: app("reviews"),
			Labels: map[string]string{"istio.io/use-waypoint": "waypoint"},
			Ports:  []portDef{{Name: "http", Port: 9080, Target: 9080}}},
		{Name: "waypoint", Namespace: "shop", VIP: vipWaypoint,
			Labels: map[string]string{"gateway.istio.io/managed": "istio.io-mesh-controller",
				"gateway.networking.k8s.io/gateway-name": "waypoint", "istio.io/gateway-name": "waypoint"},
			Selector: map[string]string{"gateway.networking.k8s.io/gateway-name": "waypoint"},
			Ports:    []portDef{{Name: "mesh", Port: 15008, Target: 15008, AppProtocol: "hbone"}}},
		{Name: "private", Namespace: "team", VIP: vipPrivate, Selector: app("private"),
			Annotations: map[string]string{"networking.istio.io/exportTo": "."},
			Ports:       []portDef{{Name: "tcp", Port: 8443, Target: 8443}}},
		{Name: "fresh", Namespace: "shop", VIP: vipFresh, Selector: app("fresh"), Later: true,
			Ports: []portDef{{Name: "tcp", Port: 8088, Target: 8088}}},
	}
}

func serviceNamed(name string) svcDef {
	for _, s := range worldServices() {
		if s.Name == name {
			return s
		}
	}
	panic("no service " + name)
}

// istioConfig is the Istio configuration: round robin for rr, 80/20 over two subsets for the
// TCP service split, a path route of multi's HTTP port to web (L7: needs a waypoint), and a
// ServiceEntry whose static endpoints are two lab pods (VMs).
func istioConfig(ip func(pod string) string) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: rr
  namespace: shop
spec:
  host: rr.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: split
  namespace: shop
spec:
  host: split.shop.svc.cluster.local
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: split
  namespace: shop
spec:
  hosts:
  - split.shop.svc.cluster.local
  tcp:
  - route:
    - destination:
        host: split.shop.svc.cluster.local
        subset: v1
        port:
          number: 7100
      weight: 80
    - destination:
        host: split.shop.svc.cluster.local
        subset: v2
        port:
          number: 7100
      weight: 20
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: multi-paths
  namespace: shop
spec:
  hosts:
  - multi.shop.svc.cluster.local
  http:
  - name: api
    match:
    - uri:
        prefix: /api
      port: 80
    route:
    - destination:
        host: web.shop.svc.cluster.local
        port:
          number: 80
  - match:
    - port: 80
    route:
    - destination:
        host: multi.shop.svc.cluster.local
        port:
          number: 80
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: legacy
  namespace: shop
spec:
  hosts:
  - legacy.example.com
  addresses:
  - %s
  ports:
  - number: 8000
    name: tcp
    protocol: TCP
  resolution: STATIC
  endpoints:
  - address: %s
  - address: %s
`, vipLegacy, ip("legacy-1"), ip("legacy-2"))
}

// kubeWorld is the fake Kubernetes API's content: namespaces, nodes, pods (and the agent's
// DaemonSet pod on n1), services and their EndpointSlices, the waypoint's GatewayClass and
// Gateway, and the Istio configuration (the ambient index reads Istio resources from
// Kubernetes, the sidecar generators from the config store: istio's own ambient tests give
// both the same objects).
func kubeWorld(t *testing.T, b kubeBuilder, m agentMode) string {
	t.Helper()
	shopLabels := map[string]string{}
	if m.workload() {
		shopLabels["istio.io/dataplane-mode"] = "ambient"
	}
	objs := []runtime.Object{
		kubeNamespace("default", nil), kubeNamespace("kube-system", nil), kubeNamespace(agentNamespace, nil),
		kubeNamespace("shop", shopLabels), kubeNamespace("team", nil),
		b.node("n1"), b.node("n2"), b.agentPod("n1"), b.agentPod("n2"),
	}
	for _, p := range b.pods {
		if !p.NotInKube && !p.Later {
			objs = append(objs, b.kubePod(p))
		}
	}
	for _, s := range worldServices() {
		if s.Later {
			continue
		}
		objs = append(objs, b.service(s), b.endpointSlice(s, b.selected(s)))
	}
	objs = append(objs, waypointObjects("shop", "waypoint", vipWaypoint)...)
	return toYAML(t, objs) + "\n---\n" + istioConfig(b.ip)
}

func joinLines(lines []string) string { return strings.Join(lines, "\n") }
