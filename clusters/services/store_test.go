package services_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/onehop-mesh/onehop/clusters/services"
)

var (
	v4CIDR = netip.MustParsePrefix("10.96.0.0/16")
	v6CIDR = netip.MustParsePrefix("fd00:10:96::/112")
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func svc(ns, name string, sel map[string]string) services.Service {
	return services.Service{Namespace: ns, Name: name, Selector: sel,
		Ports: []services.Port{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}}}
}

func mustUpsert(t *testing.T, st *services.Store, s services.Service) services.Service {
	t.Helper()
	got, err := st.UpsertService(s)
	if err != nil {
		t.Fatalf("UpsertService(%s): %v", s.Key(), err)
	}
	return got
}

func TestAllocationIsSequential(t *testing.T) {
	tests := []struct {
		name  string
		cidrs []netip.Prefix
		want  [][]netip.Addr // ClusterIPs of services a, b, c in order
	}{
		{"ipv4 skips the network address", []netip.Prefix{v4CIDR},
			[][]netip.Addr{addrs("10.96.0.1"), addrs("10.96.0.2"), addrs("10.96.0.3")}},
		{"ipv6", []netip.Prefix{v6CIDR},
			[][]netip.Addr{addrs("fd00:10:96::1"), addrs("fd00:10:96::2"), addrs("fd00:10:96::3")}},
		{"dual-stack gets one VIP per family, primary first", []netip.Prefix{v4CIDR, v6CIDR},
			[][]netip.Addr{addrs("10.96.0.1", "fd00:10:96::1"), addrs("10.96.0.2", "fd00:10:96::2"), addrs("10.96.0.3", "fd00:10:96::3")}},
		{"ipv6 primary", []netip.Prefix{v6CIDR, v4CIDR},
			[][]netip.Addr{addrs("fd00:10:96::1", "10.96.0.1"), addrs("fd00:10:96::2", "10.96.0.2"), addrs("fd00:10:96::3", "10.96.0.3")}},
		{"non-zero base", []netip.Prefix{netip.MustParsePrefix("192.168.4.16/28")},
			[][]netip.Addr{addrs("192.168.4.17"), addrs("192.168.4.18"), addrs("192.168.4.19")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := services.New(tt.cidrs...)
			for i, name := range []string{"a", "b", "c"} {
				got := mustUpsert(t, st, svc("default", name, map[string]string{"app": name}))
				if !slices.Equal(got.ClusterIPs, tt.want[i]) {
					t.Errorf("service %s got ClusterIPs %v, want %v", name, got.ClusterIPs, tt.want[i])
				}
				view, ok := st.Snapshot().Service("default", name)
				if !ok || !slices.Equal(view.ClusterIPs, tt.want[i]) {
					t.Errorf("snapshot of %s: ok=%v ClusterIPs %v, want %v", name, ok, view.ClusterIPs, tt.want[i])
				}
			}
		})
	}
}

func TestAllocationReusesFreedAddresses(t *testing.T) {
	st := services.New(v4CIDR)
	for _, name := range []string{"a", "b", "c"} {
		mustUpsert(t, st, svc("default", name, nil))
	}
	st.DeleteService("default", "b")
	if got := mustUpsert(t, st, svc("default", "d", nil)); !slices.Equal(got.ClusterIPs, addrs("10.96.0.2")) {
		t.Errorf("after deleting b, d got %v, want the lowest free address 10.96.0.2", got.ClusterIPs)
	}
	if got := mustUpsert(t, st, svc("default", "e", nil)); !slices.Equal(got.ClusterIPs, addrs("10.96.0.4")) {
		t.Errorf("e got %v, want 10.96.0.4", got.ClusterIPs)
	}
}

func TestUpdateKeepsVIPs(t *testing.T) {
	st := services.New(v4CIDR, v6CIDR)
	a := mustUpsert(t, st, svc("default", "a", map[string]string{"app": "a"}))
	mustUpsert(t, st, svc("default", "b", nil))

	upd := svc("default", "a", map[string]string{"app": "a2"})
	upd.Ports = []services.Port{{Name: "grpc", Port: 9000, TargetPort: 9000, Protocol: "TCP"}}
	got := mustUpsert(t, st, upd)
	if !slices.Equal(got.ClusterIPs, a.ClusterIPs) {
		t.Errorf("update changed VIPs from %v to %v", a.ClusterIPs, got.ClusterIPs)
	}
	view, _ := st.Snapshot().Service("default", "a")
	if !slices.Equal(view.ClusterIPs, a.ClusterIPs) || !reflect.DeepEqual(view.Ports, upd.Ports) || view.Selector["app"] != "a2" {
		t.Errorf("stored service after update = %+v, want VIPs %v and the new ports and selector", view.Service, a.ClusterIPs)
	}
	// The same name in another namespace is another service with its own VIPs.
	other := mustUpsert(t, st, svc("bench", "a", nil))
	if !slices.Equal(other.ClusterIPs, addrs("10.96.0.3", "fd00:10:96::3")) {
		t.Errorf("bench/a got %v, want 10.96.0.3 and fd00:10:96::3", other.ClusterIPs)
	}
}

func TestExplicitClusterIPs(t *testing.T) {
	st := services.New(v4CIDR)
	explicit := svc("default", "fixed", nil)
	explicit.ClusterIPs = addrs("10.96.0.1")
	if got := mustUpsert(t, st, explicit); !slices.Equal(got.ClusterIPs, addrs("10.96.0.1")) {
		t.Fatalf("explicit ClusterIP not kept: %v", got.ClusterIPs)
	}
	// Allocation skips addresses taken explicitly.
	if got := mustUpsert(t, st, svc("default", "auto", nil)); !slices.Equal(got.ClusterIPs, addrs("10.96.0.2")) {
		t.Errorf("auto got %v, want 10.96.0.2", got.ClusterIPs)
	}
	// Re-declaring a service with its own VIP is fine.
	mustUpsert(t, st, explicit)

	before := st.Snapshot()
	conflict := svc("bench", "thief", nil)
	conflict.ClusterIPs = addrs("10.96.0.2")
	_, err := st.UpsertService(conflict)
	if err == nil {
		t.Fatal("a ClusterIP owned by another service was accepted")
	}
	for _, want := range []string{"bench/thief", "10.96.0.2", "default/auto"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("conflict error %q does not mention %q", err, want)
		}
	}
	after := st.Snapshot()
	if after.Version != before.Version || !reflect.DeepEqual(after, before) {
		t.Errorf("a rejected upsert changed the store: %v -> %v", before, after)
	}

	// Moving an existing service onto another's VIP is rejected too, and keeps the old one.
	move := svc("default", "fixed", nil)
	move.ClusterIPs = addrs("10.96.0.2")
	if _, err := st.UpsertService(move); err == nil {
		t.Error("an update onto another service's ClusterIP was accepted")
	}
	if v, _ := st.Snapshot().Service("default", "fixed"); !slices.Equal(v.ClusterIPs, addrs("10.96.0.1")) {
		t.Errorf("rejected update changed fixed's VIPs to %v", v.ClusterIPs)
	}
}

func TestAllocationExhausted(t *testing.T) {
	small := netip.MustParsePrefix("fd00:10:96::/126") // ::1, ::2, ::3 are usable
	st := services.New(small)
	for i, want := range []string{"fd00:10:96::1", "fd00:10:96::2", "fd00:10:96::3"} {
		if got := mustUpsert(t, st, svc("default", fmt.Sprint("s", i), nil)); !slices.Equal(got.ClusterIPs, addrs(want)) {
			t.Errorf("s%d got %v, want %s", i, got.ClusterIPs, want)
		}
	}
	version := st.Snapshot().Version
	_, err := st.UpsertService(svc("default", "one-too-many", nil))
	if err == nil || !strings.Contains(err.Error(), "exhausted") || !strings.Contains(err.Error(), small.String()) {
		t.Fatalf("allocation from a full CIDR: err = %v, want it to say %s is exhausted", err, small)
	}
	snap := st.Snapshot()
	if _, ok := snap.Service("default", "one-too-many"); ok || snap.Version != version {
		t.Errorf("a failed allocation left the service behind or bumped the version (%d -> %d)", version, snap.Version)
	}

	// Dual-stack: when the second family is full, nothing is allocated in the first either.
	ds := services.New(v4CIDR, netip.MustParsePrefix("fd00::/127")) // only fd00::1
	mustUpsert(t, ds, svc("default", "first", nil))
	dsVersion := ds.Snapshot().Version
	if _, err := ds.UpsertService(svc("default", "second", nil)); err == nil {
		t.Fatal("dual-stack allocation with a full IPv6 CIDR succeeded")
	}
	if snap := ds.Snapshot(); len(snap.Services) != 1 || snap.Version != dsVersion {
		t.Errorf("failed dual-stack allocation changed the store: %v at version %d (was %d)", snap, snap.Version, dsVersion)
	}
}

func TestEndpointsFollowPods(t *testing.T) {
	st := services.New(v4CIDR)
	mustUpsert(t, st, svc("bench", "web", map[string]string{"app": "web"}))
	mustUpsert(t, st, svc("bench", "all", map[string]string{}))

	pods := []services.Pod{
		{Namespace: "bench", Name: "web-2", Node: "n2", IPs: addrs("10.244.2.2"), Labels: map[string]string{"app": "web", "v": "2"}, Ready: true},
		{Namespace: "bench", Name: "web-1", Node: "n1", IPs: addrs("10.244.1.2", "fd00:10:244:1::2"), Labels: map[string]string{"app": "web"}, Ready: false},
		{Namespace: "default", Name: "web-other-ns", Node: "n1", IPs: addrs("10.244.1.3"), Labels: map[string]string{"app": "web"}, Ready: true},
		{Namespace: "bench", Name: "db", Node: "n1", IPs: addrs("10.244.1.4"), Labels: map[string]string{"app": "db"}, Ready: true},
		{Namespace: "bench", Name: "nolabels", Node: "n1", IPs: addrs("10.244.1.5"), Ready: true},
	}
	for _, p := range pods {
		st.UpsertPod(p)
	}
	want := []services.Endpoint{
		{Pod: "web-1", Node: "n1", IPs: addrs("10.244.1.2", "fd00:10:244:1::2"), Ready: false},
		{Pod: "web-2", Node: "n2", IPs: addrs("10.244.2.2"), Ready: true},
	}
	endpoints := func(name string) []services.Endpoint {
		t.Helper()
		v, ok := st.Snapshot().Service("bench", name)
		if !ok {
			t.Fatalf("service bench/%s missing from the snapshot", name)
		}
		return v.Endpoints
	}
	if got := endpoints("web"); !reflect.DeepEqual(got, want) {
		t.Errorf("web endpoints =\n%+v\nwant (sorted by pod, other namespace excluded)\n%+v", got, want)
	}
	if got := endpoints("all"); got == nil || len(got) != 0 {
		t.Errorf("an empty selector selected %+v, want an empty (non-nil) list", got)
	}

	// Relabelling a pod moves it out of the service; readiness is updated in place.
	relabelled := pods[0]
	relabelled.Labels = map[string]string{"app": "web-canary"}
	st.UpsertPod(relabelled)
	ready := pods[1]
	ready.Ready = true
	st.UpsertPod(ready)
	if got := endpoints("web"); len(got) != 1 || got[0].Pod != "web-1" || !got[0].Ready {
		t.Errorf("after relabel and readiness change, web endpoints = %+v, want only a ready web-1", got)
	}
	st.DeletePod("web-1")
	if got := endpoints("web"); len(got) != 0 {
		t.Errorf("after deleting web-1, web endpoints = %+v, want none", got)
	}
	if st.HasPod("web-1") || !st.HasPod("db") {
		t.Errorf("HasPod: web-1=%v db=%v, want false true", st.HasPod("web-1"), st.HasPod("db"))
	}
	var names []string
	for _, p := range st.Pods() {
		names = append(names, p.Name)
	}
	if want := []string{"db", "nolabels", "web-2", "web-other-ns"}; !slices.Equal(names, want) {
		t.Errorf("Pods() = %v, want %v", names, want)
	}
}

func TestSnapshotSortedAndVersioned(t *testing.T) {
	st := services.New(v4CIDR)
	if snap := st.Snapshot(); snap.Version != 0 || len(snap.Services) != 0 {
		t.Fatalf("new store snapshot = %+v, want version 0 and no services", snap)
	}
	last := uint64(0)
	step := func(what string, change func(), wantBump bool) {
		t.Helper()
		change()
		v := st.Snapshot().Version
		switch {
		case wantBump && v <= last:
			t.Errorf("%s: version %d did not increase from %d", what, v, last)
		case !wantBump && v != last:
			t.Errorf("%s: version changed from %d to %d for a no-op", what, last, v)
		}
		last = v
	}
	for _, k := range []string{"zeta/b", "alpha/z", "zeta/a", "alpha/a", "mid/m"} {
		ns, name, _ := strings.Cut(k, "/")
		step("upsert "+k, func() { mustUpsert(t, st, svc(ns, name, map[string]string{"app": name})) }, true)
	}
	step("upsert pod", func() {
		st.UpsertPod(services.Pod{Namespace: "mid", Name: "m-0", Labels: map[string]string{"app": "m"}})
	}, true)
	step("delete pod", func() { st.DeletePod("m-0") }, true)
	step("delete missing pod", func() { st.DeletePod("m-0") }, false)
	step("delete service", func() { st.DeleteService("mid", "m") }, true)
	step("delete missing service", func() { st.DeleteService("mid", "m") }, false)
	step("failed upsert", func() {
		bad := svc("x", "y", nil)
		bad.ClusterIPs = addrs("10.96.0.1") // owned by zeta/b
		if _, err := st.UpsertService(bad); err == nil {
			t.Error("conflicting upsert accepted")
		}
	}, false)

	var keys []string
	for _, v := range st.Snapshot().Services {
		keys = append(keys, v.Key())
	}
	if want := []string{"alpha/a", "alpha/z", "zeta/a", "zeta/b"}; !slices.Equal(keys, want) {
		t.Errorf("snapshot services = %v, want sorted %v", keys, want)
	}
	if _, ok := st.Snapshot().Service("mid", "m"); ok {
		t.Error("deleted service still in the snapshot")
	}
}

func TestWatchCoalesces(t *testing.T) {
	st := services.New(v4CIDR)
	w1, w2 := st.Watch(), st.Watch()
	pending := func(ch <-chan struct{}) int {
		n := 0
		for {
			select {
			case <-ch:
				n++
			default:
				return n
			}
		}
	}
	if n := pending(w1); n != 0 {
		t.Fatalf("a new watcher has %d notifications before any change", n)
	}
	for i := range 5 {
		mustUpsert(t, st, svc("default", fmt.Sprint("s", i), nil))
	}
	if n := pending(w1); n != 1 {
		t.Errorf("after 5 changes watcher 1 has %d notifications, want 1 (coalesced)", n)
	}
	if n := pending(w2); n != 1 {
		t.Errorf("after 5 changes watcher 2 has %d notifications, want 1 (coalesced)", n)
	}
	// A no-op does not notify; the next change does.
	st.DeletePod("missing")
	if n := pending(w1); n != 0 {
		t.Errorf("a no-op delete notified %d times", n)
	}
	st.UpsertPod(services.Pod{Namespace: "default", Name: "p"})
	if n := pending(w1); n != 1 {
		t.Errorf("after one more change watcher 1 has %d notifications, want 1", n)
	}
	// A watcher created later sees only later changes.
	w3 := st.Watch()
	if n := pending(w3); n != 0 {
		t.Errorf("a late watcher has %d stale notifications", n)
	}
	st.DeleteService("default", "s0")
	if n := pending(w3); n != 1 {
		t.Errorf("late watcher has %d notifications after a change, want 1", n)
	}
}

func TestJSONRoundTrip(t *testing.T) {
	st := services.New(v4CIDR, v6CIDR)
	mustUpsert(t, st, svc("bench", "web", map[string]string{"app": "web"}))
	mustUpsert(t, st, svc("default", "db", map[string]string{"app": "db"}))
	mustUpsert(t, st, svc("default", "gone", nil))
	st.DeleteService("default", "gone") // frees 10.96.0.3 / fd00:10:96::3
	st.UpsertPod(services.Pod{Namespace: "bench", Name: "web-0", Node: "n1", IPs: addrs("10.244.1.2", "fd00:10:244:1::2"),
		Labels: map[string]string{"app": "web"}, Ready: true})
	st.UpsertPod(services.Pod{Namespace: "default", Name: "db-0", Node: "n2", IPs: addrs("10.244.2.2", "fd00:10:244:2::2"),
		Labels: map[string]string{"app": "db"}})

	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	restored := &services.Store{}
	if err := json.Unmarshal(b, restored); err != nil {
		t.Fatal(err)
	}
	if got, want := restored.Snapshot(), st.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Errorf("restored snapshot =\n%+v\nwant\n%+v", got, want)
	}
	if got, want := restored.Pods(), st.Pods(); !reflect.DeepEqual(got, want) {
		t.Errorf("restored pods =\n%+v\nwant\n%+v", got, want)
	}
	if b2, err := json.Marshal(restored); err != nil || string(b2) != string(b) {
		t.Errorf("re-marshalled store differs (err %v):\n%s\nwant\n%s", err, b2, b)
	}

	// The restored store keeps allocating from the same CIDRs, around the VIPs in use, and its
	// version keeps increasing from where it was.
	v := restored.Snapshot().Version
	got := mustUpsert(t, restored, svc("default", "new", nil))
	if !slices.Equal(got.ClusterIPs, addrs("10.96.0.3", "fd00:10:96::3")) {
		t.Errorf("allocation after restore got %v, want 10.96.0.3 and fd00:10:96::3", got.ClusterIPs)
	}
	if nv := restored.Snapshot().Version; nv <= v {
		t.Errorf("version after restore went from %d to %d", v, nv)
	}
	if got := mustUpsert(t, restored, svc("default", "newer", nil)); !slices.Equal(got.ClusterIPs, addrs("10.96.0.4", "fd00:10:96::4")) {
		t.Errorf("second allocation after restore got %v", got.ClusterIPs)
	}
	// Watchers work on a restored store.
	w := restored.Watch()
	restored.DeletePod("db-0")
	select {
	case <-w:
	default:
		t.Error("no notification from a restored store")
	}

	if err := json.Unmarshal([]byte(`{"version": "x"}`), &services.Store{}); err == nil || !strings.Contains(err.Error(), "service store") {
		t.Errorf("bad JSON: err = %v, want a service store error", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	st := services.New(v4CIDR)
	w := st.Watch()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				name := fmt.Sprintf("g%d-%d", g, i)
				if _, err := st.UpsertService(svc("default", name, map[string]string{"app": name})); err != nil {
					t.Error(err)
				}
				st.UpsertPod(services.Pod{Namespace: "default", Name: name, Labels: map[string]string{"app": name}, Ready: true})
				_ = st.Snapshot()
				select {
				case <-w:
				default:
				}
			}
		}()
	}
	wg.Wait()
	snap := st.Snapshot()
	if len(snap.Services) != 160 || snap.Version != 320 {
		t.Fatalf("after 160 services and pods: %d services at version %d, want 160 at 320", len(snap.Services), snap.Version)
	}
	seen := map[netip.Addr]string{}
	for _, v := range snap.Services {
		if len(v.Endpoints) != 1 || v.Endpoints[0].Pod != v.Name {
			t.Errorf("%s endpoints = %+v", v.Key(), v.Endpoints)
		}
		ip := v.ClusterIPs[0]
		if other, dup := seen[ip]; dup {
			t.Errorf("%s and %s share VIP %s", v.Key(), other, ip)
		}
		seen[ip] = v.Key()
	}
}

func TestSnapshotString(t *testing.T) {
	st := services.New(v4CIDR)
	mustUpsert(t, st, svc("bench", "web", map[string]string{"app": "web"}))
	st.UpsertPod(services.Pod{Namespace: "bench", Name: "web-0", Node: "n1", IPs: addrs("10.244.1.2"), Labels: map[string]string{"app": "web"}})
	want := "bench/web [10.96.0.1] 80->8080/TCP: web-0(n1,[10.244.1.2],not-ready)\n"
	if got := st.Snapshot().String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestClusterIPRules(t *testing.T) {
	st := services.New(v4CIDR)
	a := mustUpsert(t, st, svc("default", "a", nil))
	// VIPs are immutable once given.
	moved := svc("default", "a", nil)
	moved.ClusterIPs = addrs("10.96.0.9")
	if _, err := st.UpsertService(moved); err == nil || !strings.Contains(err.Error(), "cannot change") {
		t.Errorf("changing a service's VIP: %v", err)
	}
	if v, _ := st.Snapshot().Service("default", "a"); !slices.Equal(v.ClusterIPs, a.ClusterIPs) {
		t.Errorf("VIPs changed to %v", v.ClusterIPs)
	}
	// A VIP outside the service CIDR is refused.
	out := svc("default", "out", nil)
	out.ClusterIPs = addrs("192.0.2.1")
	if _, err := st.UpsertService(out); err == nil || !strings.Contains(err.Error(), "outside the service CIDRs") {
		t.Errorf("VIP outside the CIDR: %v", err)
	}
	// An IPv4 /30 has two usable addresses: not the network, not the broadcast.
	small := services.New(netip.MustParsePrefix("10.96.0.0/30"))
	mustUpsert(t, small, svc("default", "x", nil))
	mustUpsert(t, small, svc("default", "y", nil))
	if _, err := small.UpsertService(svc("default", "z", nil)); err == nil {
		t.Error("allocated the broadcast address of a /30")
	}
}

// TestChangesSince checks that a consumer learns exactly the services a change touched.
func TestChangesSince(t *testing.T) {
	st := services.New(v4CIDR)
	mustUpsert(t, st, svc("bench", "web", map[string]string{"app": "web"}))
	mustUpsert(t, st, svc("bench", "canary", map[string]string{"app": "web", "track": "canary"}))
	mustUpsert(t, st, svc("bench", "db", map[string]string{"app": "db"}))
	mustUpsert(t, st, svc("other", "web", map[string]string{"app": "web"}))
	pod := services.Pod{Namespace: "bench", Name: "web-1", Node: "n1", IPs: addrs("10.244.1.2"), Labels: map[string]string{"app": "web"}, Ready: true}
	st.UpsertPod(pod)

	keys := func(c services.Changes) []string {
		var out []string
		for _, v := range c.Services {
			out = append(out, v.Key())
		}
		return out
	}
	all := st.ChangesSince(0)
	if !all.All || !slices.Equal(keys(all), []string{"bench/canary", "bench/db", "bench/web", "other/web"}) || all.Version != st.Snapshot().Version {
		t.Fatalf("ChangesSince(0) = all=%v %v at %d, want all four services at %d", all.All, keys(all), all.Version, st.Snapshot().Version)
	}

	canary, gone := pod, pod
	canary.Labels = map[string]string{"app": "web", "track": "canary"}
	gone.Name = "web-2"
	steps := []struct {
		name         string
		change       func()
		want, delete []string
	}{
		{"readiness", func() { pod.Ready = false; st.UpsertPod(pod) }, []string{"bench/web"}, nil},
		{"relabel into a second service", func() { st.UpsertPod(canary) }, []string{"bench/canary", "bench/web"}, nil},
		{"relabel out of it", func() { st.UpsertPod(pod) }, []string{"bench/canary", "bench/web"}, nil},
		{"unselected pod", func() {
			st.UpsertPod(services.Pod{Namespace: "bench", Name: "x", Labels: map[string]string{"app": "x"}})
		}, nil, nil},
		{"delete a pod", func() { st.DeletePod(pod.Name) }, []string{"bench/web"}, nil},
		{"missing pod", func() { st.DeletePod(gone.Name) }, nil, nil},
		{"service definition", func() { mustUpsert(t, st, svc("bench", "db", map[string]string{"app": "db2"})) }, []string{"bench/db"}, nil},
		{"delete a service", func() { st.DeleteService("other", "web") }, nil, []string{"other/web"}},
	}
	for _, step := range steps {
		before := st.Snapshot().Version
		step.change()
		c := st.ChangesSince(before)
		if c.All || c.Version != st.Snapshot().Version || !slices.Equal(keys(c), step.want) || !slices.Equal(c.Deleted, step.delete) {
			t.Errorf("%s: ChangesSince(%d) = all=%v changed %v deleted %v at %d, want changed %v deleted %v at %d",
				step.name, before, c.All, keys(c), c.Deleted, c.Version, step.want, step.delete, st.Snapshot().Version)
		}
		// The views are the store's current state.
		for _, v := range c.Services {
			if want, _ := st.Snapshot().Service(v.Namespace, v.Name); !reflect.DeepEqual(v, want) {
				t.Errorf("%s: changed view %+v, want the snapshot's %+v", step.name, v, want)
			}
		}
	}

	// A restore replaces everything: no version before it can be brought up to date piecemeal.
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	v := st.Snapshot().Version
	if err := json.Unmarshal(b, st); err != nil {
		t.Fatal(err)
	}
	if c := st.ChangesSince(v); !c.All || len(c.Services) != 3 {
		t.Errorf("after a restore, ChangesSince(%d) = all=%v %v, want all three services", v, c.All, keys(c))
	}
}
