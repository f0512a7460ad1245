package workload

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	wapi "github.com/onehop-mesh/onehop/dataplane/workloadapi"
)

// scaleState loads services × perService workloads, as istiod would name and describe them.
func scaleState(tb testing.TB, services, perService int) *State {
	s := NewState(Options{})
	for i := range services {
		host := fmt.Sprintf("svc-%d.ns-%d.svc.cluster.local", i, i%50)
		name, a := service(fmt.Sprintf("ns-%d", i%50), host, vips(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}).String()), ports(80, 8080))
		if err := s.Update(name, a); err != nil {
			tb.Fatal(err)
		}
		for j := range perService {
			n := i*perService + j
			uid := fmt.Sprintf("Kubernetes//Pod/ns-%d/svc-%d-%d", i%50, i, j)
			wn, wa := workload(uid, ips(netip.AddrFrom4([4]byte{10, byte(128 + n>>16), byte(n >> 8), byte(n)}).String()), of(name), func(w *wapi.Workload) {
				w.Namespace, w.WorkloadName, w.CanonicalName, w.CanonicalRevision = fmt.Sprintf("ns-%d", i%50), fmt.Sprintf("svc-%d", i), fmt.Sprintf("svc-%d", i), "v1"
				w.TrustDomain, w.ClusterId, w.Node, w.ServiceAccount = "cluster.local", "Kubernetes", fmt.Sprintf("n%d", n%20), fmt.Sprintf("svc-%d", i)
			})
			if err := s.Update(wn, wa); err != nil {
				tb.Fatal(err)
			}
		}
	}
	return s
}

// BenchmarkScale: 10,000 services × 10 endpoints. Reports the State's heap (resources and
// translated config) and the cost of one workload change re-translated.
func BenchmarkScale(b *testing.B) {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := scaleState(b, 10000, 10)
	r := s.Translate()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(after.HeapAlloc-before.HeapAlloc) / (1 << 20)
	if len(r.Config.Services) != 10000 {
		b.Fatalf("%d frontends", len(r.Config.Services))
	}
	b.ResetTimer()
	for i := range b.N {
		name, a := workload("Kubernetes//Pod/ns-0/svc-0-0", ips(fmt.Sprintf("10.200.%d.%d", i>>8&255, i&255)), of("ns-0/svc-0.ns-0.svc.cluster.local"))
		if err := s.Update(name, a); err != nil {
			b.Fatal(err)
		}
		if r := s.Translate(); len(r.Changed) != 1 {
			b.Fatalf("changed %v", r.Changed)
		}
	}
	b.StopTimer()
	b.ReportMetric(heap, "heap-MiB")
	runtime.KeepAlive(s)
}
