package variants

import (
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/internal/testbin"
)

// kernelCounter reads onehop_kernel_<name>_total from a node's agent.
func kernelCounter(t *testing.T, c *netns.Cluster, node, name string) int {
	t.Helper()
	mfs, family := scrape(t, c, node), "onehop_kernel_"+name+"_total"
	if mfs[family] == nil {
		t.Fatalf("agent on %s has no %s", node, family)
	}
	return int(sum(mfs, family, nil))
}

// onehop-sockmap: connections between pods of one node are redirected socket to socket; a
// connection to a pod of another node is not (neither end's agent knows the peer as local).
func TestOnehopSockmapAcceleratesSameNodeOnly(t *testing.T) {
	bin, p, name := testProvider(t, "tk")
	v := &OnehopWith{base: &Onehop{AgentBinary: bin + "-agent"}, name: "onehop-sockmap", labels: map[string]string{SockmapLabel: "on"}}
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{{Name: "fast", Labels: v.Labels()}},
		Pods: []clusters.PodSpec{
			{Name: "client", Namespace: "fast", Node: "n1"},
			{Name: "web-1", Namespace: "fast", Node: "n1", Labels: map[string]string{"app": "same"}, Workload: &clusters.Workload{Kind: "fortio-server"}},
			{Name: "web-2", Namespace: "fast", Node: "n2", Labels: map[string]string{"app": "cross"}, Workload: &clusters.Workload{Kind: "fortio-server"}}},
	}
	for _, svc := range []string{"same", "cross"} {
		spec.Services = append(spec.Services, clusters.ServiceDef{Name: svc, Namespace: "fast", Selector: map[string]string{"app": svc},
			Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}})
	}
	c, err := upAndInstall(t, p, spec, v)
	if err != nil {
		t.Fatal(err)
	}
	added1, redirected1, added2 := kernelCounter(t, c, "n1", "sockmap_added"), kernelCounter(t, c, "n1", "msg_redirected"), kernelCounter(t, c, "n2", "sockmap_added")
	for i := 0; i < 5; i++ {
		if status, _ := get(t, c, "client", "http://"+serviceIP(t, c, "fast", "same")+"/echo"); status != "200" {
			t.Fatalf("same-node request %d: %q", i, status)
		}
	}
	if a, r := kernelCounter(t, c, "n1", "sockmap_added")-added1, kernelCounter(t, c, "n1", "msg_redirected")-redirected1; a != 10 || r < 10 {
		t.Errorf("5 same-node requests (a connection each): %d sockets added, %d messages redirected on n1; want 10, >= 10", a, r)
	}
	added1 = kernelCounter(t, c, "n1", "sockmap_added")
	for i := 0; i < 5; i++ {
		if status, _ := get(t, c, "client", "http://"+serviceIP(t, c, "fast", "cross")+"/echo"); status != "200" {
			t.Fatalf("cross-node request %d: %q", i, status)
		}
	}
	if a1, a2 := kernelCounter(t, c, "n1", "sockmap_added")-added1, kernelCounter(t, c, "n2", "sockmap_added")-added2; a1 != 0 || a2 != 0 {
		t.Errorf("cross-node requests added %d sockets on n1 and %d on n2, want none", a1, a2)
	}
}

// sidecar-sockmap: every same-node hop of the sidecar chain (application to its sidecar on
// loopback through the REDIRECT, sidecar to sidecar, sidecar to application) is redirected, and
// requests go through both proxies as with plain sidecars.
func TestSidecarSockmapAcceleratesTheChain(t *testing.T) {
	v := &SidecarSockmap{Sidecar: &Sidecar{MTLS: true, Sockmap: true}, agents: &Onehop{AgentBinary: testbin.Onehop(t) + "-agent"}}
	c, err := sidecarLab(t, v)
	if err != nil {
		t.Fatal(err)
	}
	client, server := proxyOf(t, v.Sidecar, "mesh-client"), proxyOf(t, v.Sidecar, "mesh-web-1")
	in0, added0, redirected0 := requests(t, server, "inbound"), kernelCounter(t, c, "n1", "sockmap_added"), kernelCounter(t, c, "n1", "msg_redirected")
	out0 := requests(t, client, "outbound")
	for i := 0; i < 5; i++ {
		if status, peer := get(t, c, "mesh-client", "http://"+serviceIP(t, c, "mesh", "same")+"/echo"); status != "200" || !strings.HasSuffix(peer, ":80") {
			t.Fatalf("request %d: %q %q", i, status, peer)
		}
	}
	if d1, d2 := requests(t, client, "outbound")-out0, requests(t, server, "inbound")-in0; d1 < 5 || d2 < 5 {
		t.Errorf("the sidecars counted %d outbound and %d inbound requests, want >= 5 each", d1, d2)
	}
	// Per request a new application connection (2 sockets); the proxies' own connections may
	// be pooled: at least the applications' ends and one chain's were added.
	added, redirected := kernelCounter(t, c, "n1", "sockmap_added")-added0, kernelCounter(t, c, "n1", "msg_redirected")-redirected0
	t.Logf("5 requests: %d sockets added, %d messages redirected", added, redirected)
	if added < 10+4 || redirected < 5*6 {
		t.Errorf("5 requests through the chain: %d sockets added, %d messages redirected; want >= 14 and >= 30 (request and response on 3 hops)", added, redirected)
	}
	if status, _ := get(t, c, "mesh-client", "http://"+serviceIP(t, c, "mesh", "cross")+"/echo"); status != "200" {
		t.Errorf("cross-node request: %q", status)
	}
	// The plain sidecar variant does not inject this namespace, nor this one plain's.
	if (&Sidecar{MTLS: true}).injects(clusters.Namespace{Labels: v.Labels()}) || !v.injects(clusters.Namespace{Labels: v.Labels()}) {
		t.Error("sidecar and sidecar-sockmap both claim the namespace")
	}
}
