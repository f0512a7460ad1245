package variants

import (
	"context"
	"testing"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
)

// TestOnehopWaypointSteersToTheWaypoint: with onehop-waypoint, a client's connection to the
// service VIP is sent by the agent straight to the waypoint (no kube-proxy rule involved), and
// the waypoint's request counter grows with every request. Uninstall restores the service.
func TestOnehopWaypointSteersToTheWaypoint(t *testing.T) {
	bin, p, name := testProvider(t, "tw")
	t.Setenv("ONEHOP_AGENT_BIN", bin+"-agent")
	v := &OnehopWaypoint{base: &Onehop{AgentBinary: bin + "-agent"}}
	web := map[string]string{"app": "web"}
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{{Name: "wp", Labels: v.Labels()}},
		Pods: []clusters.PodSpec{{Name: "client", Namespace: "wp", Node: "n1"},
			{Name: "web-1", Namespace: "wp", Node: "n1", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}},
			{Name: "web-2", Namespace: "wp", Node: "n2", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}}},
		Services: []clusters.ServiceDef{{Name: "web", Namespace: "wp", Selector: web,
			Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}}}
	cl, err := p.Up(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	c := cl.(*netns.Cluster)
	t.Cleanup(func() { c.Close() })
	if err := v.Install(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	uninstalled := false
	t.Cleanup(func() {
		if !uninstalled {
			v.Uninstall(context.Background(), c)
		}
	})
	if len(v.waypoints) != 1 {
		t.Fatalf("%d waypoints, want 1", len(v.waypoints))
	}
	wp := v.waypoints[0]
	vip := serviceIP(t, c, "wp", "web")
	before, _ := wp.Requests()
	nat := natPackets(t, c, vip)
	for i := range 10 {
		if status, _ := get(t, c, "client", "http://"+vip+"/"); status != "200" {
			t.Fatalf("request %d through the waypoint: status %q", i, status)
		}
	}
	if after, _ := wp.Requests(); after-before < 10 {
		t.Errorf("waypoint took %d requests of 10", after-before)
	}
	if d := natPackets(t, c, vip) - nat; d != 0 {
		t.Errorf("%d packets went through kube-proxy's rules: the agent did not steer to the waypoint", d)
	}
	if err := v.Uninstall(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	uninstalled = true
	svc, _ := c.Services().Snapshot().Service("wp", "web")
	if svc.Selector["app"] != "web" || svc.Ports[0].TargetPort != 8080 {
		t.Errorf("service not restored: %+v", svc.Service)
	}
	if _, ok := c.Services().Snapshot().Service("wp", "web-backend"); ok {
		t.Error("web-backend left behind")
	}
}
