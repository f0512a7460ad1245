package istiod

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/clusters/controlplane"
	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/model"
	"github.com/onehop-mesh/onehop/dataplane/workload"
	"github.com/onehop-mesh/onehop/dataplane/xds"
)

// TestLabShapesMatchIstiod: given the same cluster, the lab's control plane (which builds its
// xDS and workload API resources by hand) and istiod's own generators make the agent's
// translation program the same services, VIP:port by VIP:port, with the same endpoints, in both
// modes. This is what holds the lab to the shapes istiod really sends. It needs no root: the
// agent's xDS and workload API clients run in the test, without BPF.
//
// Left out, because the lab's store cannot say them: a selector-less service (kubernetes), a
// ServiceEntry, exportTo (a sidecar of istio-system does not see team/private; the lab has no
// export rules) and, in workload mode, the waypoint of reviews (the lab carries waypoints by
// selecting the waypoint pod). Istio's LB policies and weights are not compared, endpoints are.
func TestLabShapesMatchIstiod(t *testing.T) {
	pods := worldPods()
	ips := map[string]string{}
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Node]++
		ips[p.Name] = fmt.Sprintf("10.244.%s.%d", strings.TrimPrefix(p.Node, "n"), perNode[p.Node]+1)
	}
	b := kubeBuilder{ip: func(p string) string { return ips[p] },
		nodeIP: func(n string) string { return "172.30.0." + strings.TrimPrefix(n, "n") }, pods: pods}

	store := services.New(netip.MustParsePrefix("10.96.0.0/16"))
	for _, p := range pods {
		if p.NotInKube || p.Later {
			continue
		}
		store.UpsertPod(services.Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Node,
			IPs: []netip.Addr{netip.MustParseAddr(ips[p.Name])}, Labels: p.Labels, Ready: true})
	}
	compared := map[string]bool{} // the VIPs both sides must agree on
	for _, s := range worldServices() {
		if len(s.Selector) == 0 || s.Later {
			continue
		}
		svc := services.Service{Namespace: s.Namespace, Name: s.Name, Selector: s.Selector,
			ClusterIPs: []netip.Addr{netip.MustParseAddr(s.VIP)}}
		for _, p := range s.Ports {
			proto := string(p.Protocol)
			if proto == "" {
				proto = "TCP"
			}
			svc.Ports = append(svc.Ports, services.Port{Name: p.Name, Port: uint16(p.Port), TargetPort: uint16(p.Target), Protocol: services.Protocol(proto)})
		}
		if _, err := store.UpsertService(svc); err != nil {
			t.Fatal(err)
		}
		compared[s.VIP] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cpDone := make(chan error, 1)
	go func() { cpDone <- controlplane.New(store, controlplane.Options{}).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-cpDone; err != nil {
			t.Errorf("lab control plane: %v", err)
		}
	})

	for _, m := range []agentMode{sidecarSotW, workloadAPI} {
		t.Run(m.name, func(t *testing.T) {
			skip := map[string]bool{}
			if m.workload() {
				skip[vipReviews] = true // istiod steers it to its waypoint; the lab's store does not know waypoints
			} else {
				skip[vipPrivate] = true // exportTo ".": hidden from a sidecar of istio-system
			}
			_, addr := startIstiod(t, kubeWorld(t, b, m), istioConfig(b.ip), m.workload())
			fromIstiod := follow(t, addr, m, b.nodeIP("n1"))
			fromLab := follow(t, l.Addr().String(), m, b.nodeIP("n1"))
			lab, istio := endpointsByFrontend(fromLab, compared, skip), endpointsByFrontend(fromIstiod, compared, skip)
			if len(lab) < 12 { // a sanity floor: the world has 14 comparable frontends per mode
				t.Fatalf("the lab's config gives only %d frontends: %v", len(lab), lab)
			}
			var diffs []string
			for _, k := range sortedKeysOf(lab, istio) {
				if !slices.Equal(lab[k], istio[k]) {
					diffs = append(diffs, fmt.Sprintf("%s: lab %v, istiod %v", k, lab[k], istio[k]))
				}
			}
			if len(diffs) > 0 {
				t.Errorf("the lab's and istiod's configs differ:\n  %s", strings.Join(diffs, "\n  "))
			}
			t.Logf("%d frontends agree between the lab's control plane and istiod (%s)", len(lab), m.name)
		})
	}
}

// follow runs the agent's client for mode m against addr until it is ready and its config has
// been stable for 300 ms, and returns that config.
func follow(t *testing.T, addr string, m agentMode, nodeIP string) model.Config {
	t.Helper()
	id := xds.Identity{ProxyType: m.proxyType, IP: netip.MustParseAddr(nodeIP), PodName: "onehop-agent-n1", Namespace: agentNamespace,
		NodeName: "n1", DNSDomain: "cluster.local", ClusterID: "Kubernetes", Version: xds.IstioVersion}
	var mu sync.Mutex
	var last model.Config
	var at time.Time
	apply := func(c model.Config) error {
		mu.Lock()
		last, at = c, time.Now()
		mu.Unlock()
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ready func() bool
	if m.workload() {
		c := &workload.Client{Addr: addr, Node: id.Node(), Apply: apply}
		ready = c.Ready
		go c.Run(ctx)
	} else {
		c := &xds.Client{Addr: addr, Node: id.Node(), Delta: m.delta, Apply: apply}
		ready = c.Ready
		go c.Run(ctx)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		stable := !at.IsZero() && time.Since(at) > 300*time.Millisecond
		cfg := last
		mu.Unlock()
		if ready() && stable {
			return cfg
		}
	}
	t.Fatalf("no stable config from %s within 20 s (ready %v)", addr, ready())
	return model.Config{}
}

// endpointsByFrontend lists each frontend's endpoints, sorted, for the VIPs in want but not skip.
func endpointsByFrontend(cfg model.Config, want, skip map[string]bool) map[string][]string {
	out := map[string][]string{}
	for k, svc := range cfg.Services {
		vip := k.VIP.String()
		if !want[vip] || skip[vip] {
			continue
		}
		eps := []string{}
		for _, level := range svc.Priorities {
			for _, e := range level {
				eps = append(eps, e.Addr.String())
			}
		}
		slices.Sort(eps)
		out[netip.AddrPortFrom(k.VIP, k.Port).String()] = eps
	}
	return out
}

func sortedKeysOf(ms ...map[string][]string) []string {
	set := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			set[k] = true
		}
	}
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
