package xds

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// incrementalState has services of every shape an endpoint assignment can feed: one per VIP
// on its own cluster, two VIPs on a shared cluster, a weighted split over two clusters, an
// RDS route, an inline route, a static cluster, and a cluster whose EDS name differs from its
// name. CLAs are named "c0".."c<n-1>", "shared", "v1", "v2", "routed", "inline", "eds-of-odd".
func incrementalState(n int) (State, map[string]*endpointv3.ClusterLoadAssignment) {
	s := state(
		listener("shared", "0.0.0.0", 81, chain("", tcpProxy("shared"), "10.96.1.1/32", "10.96.1.2/32")),
		listener("split", "10.96.2.1", 80, chain("", weightedTCP("v1", 90, "v2", 10))),
		listener("http", "0.0.0.0", 8080, chain("", hcmRDS("r"), "10.96.3.1/32")),
		routeTo("r", "routed"),
		listener("inline", "10.96.4.1", 80, chain("", hcmInline(routeTo("ir", "inline")))),
		listener("static", "10.96.5.1", 80, chain("", tcpProxy("static"))),
		listener("odd", "10.96.6.1", 80, chain("", tcpProxy("odd"))),
		&clusterv3.Cluster{Name: "static", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment: cla("static", ep{addr: "10.2.0.1:80"})},
	)
	odd := edsCluster("odd", rr)
	odd.EdsClusterConfig.ServiceName = "eds-of-odd"
	s.Clusters["odd"] = NewCluster(odd)
	for _, c := range []string{"shared", "v1", "v2", "routed", "inline"} {
		s.Clusters[c] = NewCluster(edsCluster(c, rr))
	}
	names := []string{"shared", "v1", "v2", "routed", "inline", "eds-of-odd"}
	for i := range n {
		c := fmt.Sprintf("c%d", i)
		l := listener(c, fmt.Sprintf("10.97.%d.%d", i/250, i%250+1), 80, chain("", tcpProxy(c)))
		s.Listeners[l.Name] = NewListener(l)
		s.Clusters[c] = NewCluster(edsCluster(c, rr))
		names = append(names, c)
	}
	clas := map[string]*endpointv3.ClusterLoadAssignment{} // what each assignment was made from
	for i, n := range names {
		clas[n] = cla(n, ep{addr: fmt.Sprintf("10.1.%d.1:8080", i)}, ep{addr: fmt.Sprintf("10.1.%d.2:8080", i)})
		s.Endpoints[n] = NewAssignment(clas[n])
	}
	return s, clas
}

// TestUpdateEndpointsRetranslatesOnlyTheServicesFed: a change to one CLA assembles the
// services that use it and nothing else.
func TestUpdateEndpointsRetranslatesOnlyTheServicesFed(t *testing.T) {
	for _, tc := range []struct {
		cla  string
		fed  int // services using it
		diff []model.Key
	}{
		{"c3", 1, []model.Key{key("10.97.0.4:80")}},
		{"shared", 2, []model.Key{key("10.96.1.1:81"), key("10.96.1.2:81")}},
		{"v2", 1, []model.Key{key("10.96.2.1:80")}},
		{"routed", 1, []model.Key{key("10.96.3.1:8080")}},
		{"inline", 1, []model.Key{key("10.96.4.1:80")}},
		{"eds-of-odd", 1, []model.Key{key("10.96.6.1:80")}},
		{"unused", 0, nil},
	} {
		t.Run(tc.cla, func(t *testing.T) {
			s, _ := incrementalState(100)
			var tr Translator
			base, err := tr.Translate(&s)
			if err != nil {
				t.Fatal(err)
			}
			if tr.Assembled != len(base.Services) {
				t.Fatalf("a first Translate assembled %d services, want all %d", tr.Assembled, len(base.Services))
			}
			s.Previous = base
			s.Endpoints = maps.Clone(s.Endpoints)
			s.Endpoints[tc.cla] = NewAssignment(cla(tc.cla, ep{addr: "10.3.0.1:8080"}))
			before := tr.Assembled
			got, diff, ok, err := tr.UpdateEndpoints(&s, []string{tc.cla})
			if err != nil || !ok {
				t.Fatalf("UpdateEndpoints: ok %v, %v", ok, err)
			}
			if n := tr.Assembled - before; n != tc.fed {
				t.Errorf("assembled %d services, want %d", n, tc.fed)
			}
			slices.SortFunc(diff, compareKey)
			if !reflect.DeepEqual(diff, tc.diff) {
				t.Errorf("diff %v, want %v", diff, tc.diff)
			}
			want, err := Translate(&s)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("UpdateEndpoints gave\n%swant (Translate)\n%s", dump(got), dump(want))
			}
		})
	}
}

func compareKey(a, b model.Key) int { return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Port, b.Port)) }

// TestUpdateEndpointsEqualsTranslate: over random sequences of endpoint changes (health,
// weights, priorities, endpoints added and removed, assignments withdrawn and restored,
// invalid ones), UpdateEndpoints gives what a fresh Translate of the same state gives, the
// same error when there is one, and a diff that is exactly the services that changed.
func issuesOf(err error) []Issue {
	var rej *RejectedError
	if errors.As(err, &rej) {
		return rej.Issues
	}
	return nil
}

func TestUpdateEndpointsEqualsTranslate(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(seed, 1))
			s, clas := incrementalState(30)
			var tr Translator
			applied, err := tr.Translate(&s)
			if err != nil {
				t.Fatal(err)
			}
			names := slices.Sorted(maps.Keys(s.Endpoints))
			for step := range 60 {
				cand := s
				cand.Previous = applied
				cand.Endpoints = maps.Clone(s.Endpoints)
				var changed []string
				for range 1 + rnd.IntN(3) {
					n := names[rnd.IntN(len(names))]
					changed = append(changed, n)
					if c := mutate(rnd, n, clas[n]); c != nil {
						clas[n] = c
						cand.Endpoints[n] = NewAssignment(c)
					} else {
						delete(clas, n)
						delete(cand.Endpoints, n)
					}
				}
				got, diff, ok, gotErr := tr.UpdateEndpoints(&cand, changed)
				if !ok {
					t.Fatalf("step %d: UpdateEndpoints declined", step)
				}
				full := cand
				var fresh Translator
				want, wantErr := fresh.Translate(&full)
				// Rejected services are reported and the rest applied (partial acceptance):
				// UpdateEndpoints' error names those it re-translated, the report all of them.
				if gr, wr := tr.Report(), fresh.Report(); !reflect.DeepEqual(gr, wr) {
					t.Fatalf("step %d: UpdateEndpoints report %+v, Translate report %+v", step, gr, wr)
				}
				var rej *RejectedError
				if gotErr != nil && (!errors.As(gotErr, &rej) || wantErr == nil) {
					t.Fatalf("step %d: UpdateEndpoints error %v, Translate error %v", step, gotErr, wantErr)
				}
				for _, is := range issuesOf(gotErr) {
					if !slices.Contains(issuesOf(wantErr), is) {
						t.Fatalf("step %d: UpdateEndpoints rejected %+v, Translate did not", step, is)
					}
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("step %d: UpdateEndpoints gave\n%swant (Translate)\n%s", step, dump(got), dump(want))
				}
				var wantDiff []model.Key
				for k := range keysOf(applied, want) {
					if a, b := applied.Services[k], want.Services[k]; !reflect.DeepEqual(a, b) {
						wantDiff = append(wantDiff, k)
					}
				}
				slices.SortFunc(diff, compareKey)
				slices.SortFunc(wantDiff, compareKey)
				if !slices.Equal(diff, wantDiff) {
					t.Fatalf("step %d: diff %v, want %v", step, diff, wantDiff)
				}
				s, applied = cand, got
			}
		})
	}
}

func keysOf(cs ...model.Config) map[model.Key]bool {
	out := map[model.Key]bool{}
	for _, c := range cs {
		for k := range c.Services {
			out[k] = true
		}
	}
	return out
}

// mutate returns a changed copy of c (nil: withdrawn), or a fresh assignment when c is nil.
func mutate(rnd *rand.Rand, name string, c *endpointv3.ClusterLoadAssignment) *endpointv3.ClusterLoadAssignment {
	fresh := func() *endpointv3.ClusterLoadAssignment {
		var eps []ep
		for i := range 1 + rnd.IntN(4) {
			eps = append(eps, ep{addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 5, byte(rnd.IntN(4)), byte(i + 1)}), 80).String(),
				prio: uint32(rnd.IntN(2)), weight: wrapperspb.UInt32(uint32(1 + rnd.IntN(5)))})
		}
		return cla(name, eps...)
	}
	if c == nil {
		return fresh()
	}
	c = proto.Clone(c).(*endpointv3.ClusterLoadAssignment)
	var lbs []*endpointv3.LbEndpoint
	for _, loc := range c.GetEndpoints() {
		lbs = append(lbs, loc.GetLbEndpoints()...)
	}
	switch rnd.IntN(8) {
	case 0:
		return nil
	case 1:
		return fresh()
	case 2: // all unhealthy: the service goes
		for _, lb := range lbs {
			lb.HealthStatus = corev3.HealthStatus_UNHEALTHY
		}
	case 3: // invalid: the update is refused
		lbs[0].LoadBalancingWeight = wrapperspb.UInt32(0)
	case 4:
		lbs[rnd.IntN(len(lbs))].LoadBalancingWeight = wrapperspb.UInt32(uint32(1 + rnd.IntN(9)))
	default: // one endpoint's health flips
		lb := lbs[rnd.IntN(len(lbs))]
		if lb.HealthStatus == corev3.HealthStatus_UNHEALTHY {
			lb.HealthStatus = corev3.HealthStatus_HEALTHY
		} else {
			lb.HealthStatus = corev3.HealthStatus_UNHEALTHY
		}
	}
	return c
}

// TestClientAppliesOnlyWhatAnEndpointUpdateChanged: after a full sync, an update of one
// endpoint assignment reaches the data plane through ApplyChanged with just the service it
// feeds; resent unchanged resources apply nothing; a listener change goes through Apply.
func TestClientAppliesOnlyWhatAnEndpointUpdateChanged(t *testing.T) {
	for _, p := range protocols {
		t.Run(p.name, func(t *testing.T) {
			cp := startControlPlane(t, "127.0.0.1:0")
			cp.set(t, "v1", true, webAPI(ep{addr: "10.1.0.1:8080"})...)
			var (
				mu      sync.Mutex
				changes [][]model.Key
			)
			c := startClient(t, cp.addr, p.delta, func(tc *testClient) {
				tc.ApplyChanged = func(cfg model.Config, changed []model.Key) error {
					mu.Lock()
					changes = append(changes, slices.Clone(changed))
					mu.Unlock()
					return tc.rec.apply(cfg)
				}
			})
			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1)))
			waitFor(t, 5*time.Second, "Ready", c.Ready)
			full := c.rec.calls()
			mu.Lock()
			changes = nil // the initial sync may use it too, as endpoints follow their listeners
			mu.Unlock()

			cp.set(t, "v2", true, webAPI(ep{addr: "10.1.0.1:8080"}, ep{addr: "10.1.0.2:8080"})...)
			c.waitConfig(t, webAPIConfig(mep("10.1.0.1:8080", 1), mep("10.1.0.2:8080", 1)))
			mu.Lock()
			got := slices.Clone(changes)
			mu.Unlock()
			if want := [][]model.Key{{key("10.96.0.10:80")}}; !reflect.DeepEqual(got, want) {
				t.Errorf("ApplyChanged calls %v, want %v", got, want)
			}
			if n := c.rec.calls(); n != full+1 {
				t.Errorf("%d configs applied for one endpoint update, want 1", n-full)
			}

			// The api service moves to another VIP: a listener change, translated in full.
			resources := webAPI(ep{addr: "10.1.0.1:8080"}, ep{addr: "10.1.0.2:8080"})
			resources[1] = listener("api", "10.96.0.12", 80, chain("", hcmRDS("api-routes")))
			cp.set(t, "v3", true, resources...)
			moved := apiService
			moved.Key = key("10.96.0.12:80")
			c.waitConfig(t, config(svc("10.96.0.10:80", "web", model.RoundRobin, []model.Endpoint{mep("10.1.0.1:8080", 1), mep("10.1.0.2:8080", 1)}), moved))
			mu.Lock()
			defer mu.Unlock()
			if len(changes) != 1 {
				t.Errorf("a listener change went through ApplyChanged: %v", changes[1:])
			}
		})
	}
}
