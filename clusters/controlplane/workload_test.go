package controlplane

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/model"
	"github.com/onehop-mesh/onehop/dataplane/workload"
	"github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// The lab's workload API resources are named as istiod names them and translate, through the
// agent's own translation, into the services the Envoy-style resources give.
func TestWorkloadResources(t *testing.T) {
	web := services.Service{Namespace: "default", Name: "web", ClusterIPs: addrs("10.96.0.1", "fd00:10:96::1"),
		Ports: []services.Port{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}, {Name: "dns", Port: 53, Protocol: "UDP"}}}
	db := services.Service{Namespace: "data", Name: "db", ClusterIPs: addrs("10.96.0.10"),
		Ports: []services.Port{{Name: "pg", Port: 5432, Protocol: "TCP"}}}
	snap := services.Snapshot{Version: 3, Services: []services.ServiceView{
		view(web,
			services.Endpoint{Pod: "web-1", Node: "n1", IPs: addrs("10.244.1.2", "fd00:10:244:1::2"), Ready: true},
			services.Endpoint{Pod: "web-2", Node: "n2", IPs: addrs("10.244.2.2"), Ready: false}),
		view(db),
		view(services.Service{Namespace: "default", Name: "headless", Ports: web.Ports}),
	}}
	res := workloadResources(snap)
	var names []string
	for n := range res {
		names = append(names, n)
	}
	slices.Sort(names)
	want := []string{"Kubernetes//Pod/default/web-1", "Kubernetes//Pod/default/web-2",
		"data/db.data.svc.cluster.local", "default/web.default.svc.cluster.local"}
	if !slices.Equal(names, want) {
		t.Fatalf("resource names %v, want %v", names, want)
	}
	w := res["Kubernetes//Pod/default/web-2"].GetWorkload()
	if w.GetStatus() != workloadapi.WorkloadStatus_UNHEALTHY || w.GetNode() != "n2" || w.GetServices()["default/web.default.svc.cluster.local"] == nil {
		t.Errorf("web-2 = %v", w)
	}

	got := workload.Translate(res, workload.Options{}).Config
	ep := func(s string) model.Endpoint { return model.Endpoint{Addr: netip.MustParseAddrPort(s), Weight: 1} }
	key := func(s string) model.Key {
		ap := netip.MustParseAddrPort(s)
		return model.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: model.TCP}
	}
	wantEps := map[model.Key][]model.Endpoint{
		key("10.96.0.1:80"):       {ep("10.244.1.2:8080")},
		key("[fd00:10:96::1]:80"): {ep("[fd00:10:244:1::2]:8080")},
		key("10.96.0.10:5432"):    nil, // no pod: programmed empty, connect()s refused
	}
	gotEps := map[model.Key][]model.Endpoint{}
	for k, s := range got.Services {
		var eps []model.Endpoint
		for _, l := range s.Priorities {
			eps = append(eps, l...)
		}
		gotEps[k] = eps
	}
	if !reflect.DeepEqual(gotEps, wantEps) {
		t.Errorf("translated %v, want %v", gotEps, wantEps)
	}
}
