package workload

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/onehop-mesh/onehop/dataplane/model"
	wapi "github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// randomResource makes one of a small universe of resources, so that random changes collide:
// services sharing VIPs, waypoints naming each other, workloads sharing IPs, moving between
// services, turning unhealthy, changing capacity and ports, malformed addresses.
func randomResource(rng *rand.Rand) (string, *wapi.Address) {
	hosts := []string{"a.demo.svc", "b.demo.svc", "c.demo.svc", "wp.demo.svc"}
	if rng.IntN(3) == 0 {
		h := hosts[rng.IntN(len(hosts))]
		var opts []svcOpt
		var vs []string
		for _, v := range []string{"10.96.0.1", "10.96.0.2", "10.96.0.3", "fd00::1", "fd00::2"} {
			if rng.IntN(3) == 0 {
				vs = append(vs, v)
			}
		}
		opts = append(opts, vips(vs...))
		if rng.IntN(10) == 0 {
			opts = append(opts, rawVIP([]byte{1, 2, 3}))
		}
		var ps []uint32
		for _, p := range []uint32{80, 81} {
			if rng.IntN(3) > 0 {
				ps = append(ps, p, []uint32{0, 8080, 9090}[rng.IntN(3)])
			}
		}
		opts = append(opts, ports(ps...))
		switch rng.IntN(6) {
		case 0:
			opts = append(opts, waypointHost("demo", hosts[rng.IntN(len(hosts))], 0))
		case 1:
			opts = append(opts, waypointAddr([]string{"10.96.0.99", "fd00::99"}[rng.IntN(2)], uint32(rng.IntN(2)*15008)))
		}
		if rng.IntN(4) == 0 {
			opts = append(opts, allowAll())
		}
		return service("demo", h, opts...)
	}
	uid := fmt.Sprintf("c/Pod/demo/w%d", rng.IntN(8))
	var opts []wlOpt
	var as []string
	for _, a := range []string{"10.244.0.1", "10.244.0.2", "10.244.0.3", "fd00:244::1", "fd00:244::2"} {
		if rng.IntN(3) == 0 {
			as = append(as, a)
		}
	}
	opts = append(opts, ips(as...))
	if rng.IntN(10) == 0 {
		opts = append(opts, rawIP([]byte{1}))
	}
	for _, h := range hosts {
		if rng.IntN(3) == 0 {
			var ps []uint32
			if rng.IntN(2) == 0 {
				ps = []uint32{80, uint32(rng.IntN(2) * 7070), 81, 7171}
			}
			opts = append(opts, of("demo/"+h, ps...))
		}
	}
	if rng.IntN(4) == 0 {
		opts = append(opts, unhealthy())
	}
	if rng.IntN(4) == 0 {
		opts = append(opts, capacity(uint32(rng.IntN(3))))
	}
	if rng.IntN(8) == 0 {
		opts = append(opts, hostNetwork())
	}
	return workload(uid, opts...)
}

// TestIncrementalEqualsFull: over random sequences of updates and removals, a State
// translated after each batch gives what a fresh translation of the same resources gives, and
// its Changed lists exactly the frontends that differ from the previous config.
func TestIncrementalEqualsFull(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		s := NewState(Options{})
		held := resources{}
		prev := model.Config{Services: map[model.Key]model.Service{}}
		for step := range 30 {
			for range 1 + rng.IntN(4) {
				if len(held) > 0 && rng.IntN(4) == 0 {
					names := slices.Sorted(maps.Keys(held))
					n := names[rng.IntN(len(names))]
					s.Remove(n)
					delete(held, n)
					continue
				}
				n, a := randomResource(rng)
				if err := s.Update(n, a); err != nil {
					t.Fatalf("seed %d: Update(%s): %v", seed, n, err)
				}
				held[n] = a
			}
			got := s.Translate()
			want := Translate(held, Options{})
			if !maps.EqualFunc(got.Config.Services, want.Config.Services, sameService) {
				t.Fatalf("seed %d step %d: incremental\n%sfull\n%s", seed, step, dump(got.Config), dump(want.Config))
			}
			if !slices.Equal(got.Issues, want.Issues) {
				t.Fatalf("seed %d step %d: issues\n%v\nwant\n%v", seed, step, got.Issues, want.Issues)
			}
			var diff []model.Key
			for k, v := range got.Config.Services {
				if old, ok := prev.Services[k]; !ok || !sameService(old, v) {
					diff = append(diff, k)
				}
			}
			for k := range prev.Services {
				if _, ok := got.Config.Services[k]; !ok {
					diff = append(diff, k)
				}
			}
			slices.SortFunc(diff, compareKeys)
			if !slices.Equal(got.Changed, diff) {
				t.Fatalf("seed %d step %d: changed %v, want %v", seed, step, got.Changed, diff)
			}
			for _, svc := range got.Config.Services {
				if err := svc.Validate(); err != nil {
					t.Fatalf("seed %d step %d: invalid service programmed: %v", seed, step, err)
				}
			}
			// The config handed out before is never changed.
			if len(got.Changed) > 0 && maps.EqualFunc(prev.Services, got.Config.Services, sameService) {
				t.Fatalf("seed %d step %d: the previous config was modified in place", seed, step)
			}
			prev = model.Config{Services: maps.Clone(got.Config.Services)}
			// Lookups agree too.
			for _, ip := range []string{"10.244.0.1", "10.244.0.2", "fd00:244::1"} {
				a, aok := s.Identity(mustAddr(ip))
				b, bok := want.Identity(mustAddr(ip))
				if a != b || aok != bok {
					t.Fatalf("seed %d step %d: Identity(%s) = %+v %v, full %+v %v", seed, step, ip, a, aok, b, bok)
				}
			}
			for _, ip := range []string{"10.96.0.1", "10.96.0.2", "fd00::1"} {
				a, aok := s.ServiceByVIP(mustAddr(ip))
				b, bok := want.ServiceByVIP(mustAddr(ip))
				if a != b || aok != bok {
					t.Fatalf("seed %d step %d: ServiceByVIP(%s) = %+v %v, full %+v %v", seed, step, ip, a, aok, b, bok)
				}
			}
		}
	}
}

// TestUnchangedTranslation: a workload change that touches no endpoint (labels, identity)
// changes nothing and re-translates nothing.
func TestUnchangedTranslation(t *testing.T) {
	s := NewState(Options{})
	res := resources{}.
		add(service("demo", "echo.demo.svc.cluster.local", vips("10.96.0.10"), ports(80, 8080))).
		add(workload("w1", ips("10.244.1.5"), of(echo)))
	for n, a := range res {
		if err := s.Update(n, a); err != nil {
			t.Fatal(err)
		}
	}
	first := s.Translate()
	n, a := workload("w1", ips("10.244.1.5"), of(echo), func(w *wapi.Workload) { w.CanonicalRevision = "v2" })
	if err := s.Update(n, a); err != nil {
		t.Fatal(err)
	}
	if len(s.dirty) != 0 {
		t.Errorf("identity-only change marked %v dirty", s.dirty)
	}
	second := s.Translate()
	if len(second.Changed) != 0 {
		t.Errorf("changed %v", second.Changed)
	}
	if got, _ := s.Identity(mustAddr("10.244.1.5")); got.CanonicalRevision != "v2" {
		t.Errorf("identity not updated: %+v", got)
	}
	// Same map: nothing was copied.
	if fmt.Sprintf("%p", first.Config.Services) != fmt.Sprintf("%p", second.Config.Services) {
		t.Error("an unchanged translation copied the config")
	}
}
