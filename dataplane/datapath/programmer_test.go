package datapath

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/onehop-mesh/onehop/bpf"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

// ep is an endpoint "ip:port" with weight w.
func ep(addr string, w uint32) model.Endpoint {
	return model.Endpoint{Addr: netip.MustParseAddrPort(addr), Weight: w}
}

func svc(vip string, policy model.Policy, prios ...[]model.Endpoint) model.Service {
	ap := netip.MustParseAddrPort(vip)
	return model.Service{Key: model.Key{VIP: ap.Addr(), Port: ap.Port(), Proto: model.TCP}, Name: "svc-" + vip, Policy: policy, Priorities: prios}
}

// kernelService is a service as the kernel programs see it: decoded from the maps.
type kernelService struct {
	Policy model.Policy
	Slots  [model.MaxPriorities][]netip.AddrPort
}

// kernelServices decodes oh_services and the live slots of each service from oh_slots, and
// fails if oh_slots holds any entry that is not a live slot.
func kernelServices(t *testing.T, p *Programmer) map[model.Key]kernelService {
	t.Helper()
	out := map[model.Key]kernelService{}
	var (
		k     bpf.OnehopOhSvcKey
		v     bpf.OnehopOhSvc
		be    bpf.OnehopOhEndpoint
		total int
	)
	it := p.services.Iterate()
	for it.Next(&k, &v) {
		ks := kernelService{}
		ks.Policy, _ = modelPolicy(v.Policy)
		for prio, n := range v.Count {
			for i := range n {
				key := bpf.OnehopOhSlotKey{Id: v.Id, Gen: v.Gen, Prio: uint8(prio), Slot: i}
				if err := p.slots.Lookup(&key, &be); err != nil {
					t.Fatalf("service %s: slot %+v: %v", modelKey(k), key, err)
				}
				ks.Slots[prio] = append(ks.Slots[prio], addrPort(be))
			}
			total += int(n)
		}
		out[modelKey(k)] = ks
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	if n := mapLen(t, p.slots); n != total {
		t.Fatalf("oh_slots holds %d entries, the services use %d: stale slots left behind", n, total)
	}
	return out
}

func mapLen(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	var (
		n    int
		k, v []byte
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// expected is what kernelServices must return for cfg.
func expected(cfg model.Config) map[model.Key]kernelService {
	out := map[model.Key]kernelService{}
	for k, s := range cfg.Services {
		ks := kernelService{Policy: s.Policy}
		for prio, eps := range s.Priorities {
			ks.Slots[prio] = model.Slots(eps)
		}
		out[k] = ks
	}
	return out
}

func nslots(cfg model.Config, keys ...model.Key) int {
	n := 0
	for _, k := range keys {
		for _, eps := range cfg.Services[k].Priorities {
			n += len(model.Slots(eps))
		}
	}
	return n
}

// bigService has model.MaxSlots endpoints.
func bigService(vip string) model.Service {
	s := svc(vip, model.Random, []model.Endpoint{})
	for i := range model.MaxSlots {
		s.Priorities[0] = append(s.Priorities[0], ep(fmt.Sprintf("10.1.%d.%d:80", i/256, i%256), 1))
	}
	return s
}

// dumpMaps is every entry of the three maps the Programmer owns, for exact comparison.
func dumpMaps(t *testing.T, p *Programmer) []string {
	t.Helper()
	var out []string
	for _, m := range []*ebpf.Map{p.services, p.slots, p.rr} {
		var k, v []byte
		it := m.Iterate()
		for it.Next(&k, &v) {
			out = append(out, fmt.Sprintf("%s %x=%x", m.String(), k, v))
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(out)
	return out
}

func TestApplyProgramsOnlyTheDifference(t *testing.T) {
	p := loadDatapath(t, testOptions).Programmer
	a := svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1), ep("10.0.0.2:8080", 1), ep("10.0.0.3:8080", 1)})
	b := svc("10.96.0.2:443", model.RoundRobin, []model.Endpoint{ep("10.0.0.4:8443", 3), ep("10.0.0.5:8443", 1)}, []model.Endpoint{ep("10.0.1.4:8443", 1)})
	c := svc("[fd00:96::3]:80", model.Random, []model.Endpoint{ep("[fd00:10::1]:80", 1)})
	d := svc("[fd00:96::4]:80", model.Random, nil, []model.Endpoint{ep("[fd00:10::2]:80", 1), ep("[fd00:10::3]:80", 1)})
	bDoubled := b // the same slots, weights written differently
	bDoubled.Priorities = [][]model.Endpoint{{ep("10.0.0.4:8443", 6), ep("10.0.0.5:8443", 2)}, {ep("10.0.1.4:8443", 5)}}
	aShrunk := a
	aShrunk.Priorities = [][]model.Endpoint{{ep("10.0.0.1:8080", 1), ep("10.0.0.3:8080", 1)}}

	abc, aShrunkBc := config(a, b, c), config(aShrunk, b, c)
	for _, step := range []struct {
		name string
		cfg  model.Config
		want ApplyStats
	}{
		{"empty maps get three services", abc, ApplyStats{ServicesAdded: 3, MapUpdates: nslots(abc, a.Key, b.Key, c.Key) + 3}},
		{"the same config touches nothing", abc, ApplyStats{}},
		{"weights that give the same slots touch nothing", config(a, bDoubled, c), ApplyStats{}},
		{"one changed service: new slots, one service update, old slots deleted", aShrunkBc,
			ApplyStats{ServicesChanged: 1, MapUpdates: nslots(aShrunkBc, a.Key) + 1, MapDeletes: nslots(abc, a.Key)}},
		{"one removed, one added", config(aShrunk, b, d),
			ApplyStats{ServicesAdded: 1, ServicesRemoved: 1, MapUpdates: 1 + nslots(config(d), d.Key) + 1, MapDeletes: 1 + nslots(abc, c.Key)}},
		{"everything removed", config(), ApplyStats{ServicesRemoved: 3, MapUpdates: 3, MapDeletes: 3 + nslots(config(aShrunk, b, d), a.Key, b.Key, d.Key)}},
	} {
		t.Run(step.name, func(t *testing.T) {
			st, err := p.Apply(step.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if st != step.want {
				t.Errorf("Apply = %+v, want %+v", st, step.want)
			}
			if got, want := kernelServices(t, p), expected(step.cfg); !reflect.DeepEqual(got, want) {
				t.Errorf("maps hold\n%v\nwant\n%v", got, want)
			}
		})
	}
}

func TestInvalidApplyChangesNothing(t *testing.T) {
	p := loadDatapath(t, testOptions).Programmer
	good := svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1), ep("10.0.0.2:8080", 1)})
	other := svc("10.96.0.2:80", model.RoundRobin, []model.Endpoint{ep("10.0.0.3:8080", 1)})
	base := config(good, other)
	if _, err := p.Apply(base); err != nil {
		t.Fatal(err)
	}
	before := dumpMaps(t, p)

	changed := good // a valid change that must not be applied either
	changed.Priorities = [][]model.Endpoint{{ep("10.0.0.9:8080", 1)}}
	misfiled := svc("10.96.9.9:80", model.Random, []model.Endpoint{ep("10.0.0.1:80", 1)})
	for _, tc := range []struct {
		name    string
		invalid []model.Service
		key     model.Key // where the first invalid service is listed (default: its Key)
		wantErr string
	}{
		{"endpoint of the other family", []model.Service{svc("10.96.9.2:80", model.Random, []model.Endpoint{ep("[fd00::1]:80", 1)})}, model.Key{}, "svc-10.96.9.2:80"},
		{"zero weight", []model.Service{svc("10.96.9.3:80", model.Random, []model.Endpoint{ep("10.0.0.1:80", 0)})}, model.Key{}, "svc-10.96.9.3:80"},
		{"five priority levels", []model.Service{svc("10.96.9.4:80", model.Random, nil, nil, nil, nil, []model.Endpoint{ep("10.0.0.1:80", 1)})}, model.Key{}, "svc-10.96.9.4:80"},
		{"v4-mapped VIP", []model.Service{svc("[::ffff:10.96.9.5]:80", model.Random, []model.Endpoint{ep("[::ffff:10.0.0.1]:80", 1)})}, model.Key{}, "svc-[::ffff:10.96.9.5]:80"},
		{"v4-mapped endpoint", []model.Service{svc("[fd00:96::9]:80", model.Random, []model.Endpoint{ep("[::ffff:10.0.0.1]:80", 1)})}, model.Key{}, "svc-[fd00:96::9]:80"},
		{"endpoint without port", []model.Service{svc("10.96.9.6:80", model.Random, []model.Endpoint{ep("10.0.0.1:0", 1)})}, model.Key{}, "svc-10.96.9.6:80"},
		{"unknown policy", []model.Service{svc("10.96.9.7:80", model.Policy(7), []model.Endpoint{ep("10.0.0.1:80", 1)})}, model.Key{}, "svc-10.96.9.7:80"},
		{"listed under another key", []model.Service{misfiled}, model.Key{VIP: netip.MustParseAddr("10.96.9.8"), Port: 80, Proto: model.TCP}, "svc-10.96.9.9:80"},
		{"more slots than oh_slots holds", []model.Service{bigService("10.96.8.1:80"), bigService("10.96.8.2:80"), bigService("10.96.8.3:80"), bigService("10.96.8.4:80")}, model.Key{}, "raise Options.MaxSlots"},
		{"more services than oh_services holds", func() []model.Service {
			var out []model.Service
			for i := range testOptions.MaxServices {
				out = append(out, svc(fmt.Sprintf("10.96.7.%d:80", i), model.Random, []model.Endpoint{ep("10.0.0.1:80", 1)}))
			}
			return out
		}(), model.Key{}, "raise Options.MaxServices"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := config(changed, other)
			for i, s := range tc.invalid {
				k := s.Key
				if i == 0 && tc.key.VIP.IsValid() {
					k = tc.key
				}
				cfg.Services[k] = s
			}
			st, err := p.Apply(cfg)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "nothing was changed") {
				t.Fatalf("Apply = %+v, %v; want an error containing %q and saying nothing was changed", st, err, tc.wantErr)
			}
			if st != (ApplyStats{}) {
				t.Errorf("a refused Apply reports %+v", st)
			}
			if after := dumpMaps(t, p); !slices.Equal(before, after) {
				t.Fatalf("maps changed by a refused Apply:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
	// The Programmer's own view is unchanged too: the old config is still a no-op.
	if st, err := p.Apply(base); err != nil || st != (ApplyStats{}) {
		t.Errorf("re-applying the programmed config = %+v, %v; want no change", st, err)
	}
}

// A map update the kernel refuses (here: the Programmer believes oh_slots is bigger than it is)
// leaves the Programmer stale; the next Apply re-reads the maps and leaves them exactly right.
func TestApplyAfterAKernelFailureRepairsTheMaps(t *testing.T) {
	dp := loadDatapath(t, testOptions)
	opts := testOptions
	opts.MaxSlots = 1 << 20
	p := newProgrammer(dp.objs.OhServices, dp.objs.OhSlots, dp.objs.OhRr, opts)

	a := svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1), ep("10.0.0.2:8080", 1)})
	b := svc("10.96.0.2:80", model.RoundRobin, []model.Endpoint{ep("10.0.0.3:8080", 1)})
	if _, err := p.Apply(config(a, b)); err != nil {
		t.Fatal(err)
	}
	tooBig := config(a, b)
	for i := range 5 { // 5 x 1024 slots; oh_slots really holds testOptions.MaxSlots (4096)
		s := bigService(fmt.Sprintf("10.96.8.%d:80", i))
		tooBig.Services[s.Key] = s
	}
	if _, err := p.Apply(tooBig); err == nil || !strings.Contains(err.Error(), "the next Apply re-reads the maps") {
		t.Fatalf("Apply beyond the real oh_slots size = %v, want a map error", err)
	}

	a.Priorities = [][]model.Endpoint{{ep("10.0.0.2:8080", 1), ep("10.0.0.4:8080", 1)}}
	want := config(a, b)
	if _, err := p.Apply(want); err != nil {
		t.Fatal(err)
	}
	if got := kernelServices(t, p); !reflect.DeepEqual(got, expected(want)) {
		t.Fatalf("maps hold\n%v\nwant\n%v", got, expected(want))
	}
	if st, err := p.Apply(want); err != nil || st != (ApplyStats{}) {
		t.Errorf("re-applying = %+v, %v; want no change (the view matches the maps again)", st, err)
	}
}

// After a re-read, slots nobody uses are deleted, a service with a missing slot is rewritten
// and service values that cannot be right are dropped (and re-added if the config has them).
func TestResyncRepairsTamperedMaps(t *testing.T) {
	p := loadDatapath(t, testOptions).Programmer
	a := svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1), ep("10.0.0.2:8080", 1), ep("10.0.0.3:8080", 1)})
	b := svc("[fd00:96::2]:80", model.RoundRobin, []model.Endpoint{ep("[fd00:10::1]:80", 1)})
	want := config(a, b)
	if _, err := p.Apply(want); err != nil {
		t.Fatal(err)
	}
	ida, idb := p.view[a.Key].id, p.view[b.Key].id
	junk := endpoint(netip.MustParseAddrPort("10.9.9.9:9"))
	for _, err := range []error{
		p.slots.Delete(&bpf.OnehopOhSlotKey{Id: ida, Gen: 0, Prio: 0, Slot: 1}),     // a live slot of a
		p.slots.Put(&bpf.OnehopOhSlotKey{Id: idb, Gen: 1, Prio: 0, Slot: 0}, &junk), // b's unused generation
		p.slots.Put(&bpf.OnehopOhSlotKey{Id: 40, Gen: 0, Prio: 2, Slot: 7}, &junk),  // no such service
		p.services.Put(svcKey(model.Key{VIP: netip.MustParseAddr("10.96.0.9"), Port: 1, Proto: model.TCP}),
			&bpf.OnehopOhSvc{Id: idb, Count: [4]uint16{1}}), // a second service claiming b's id
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	p.stale = true
	st, err := p.Apply(want)
	if err != nil {
		t.Fatal(err)
	}
	// a is rewritten (a slot was missing); b and the impostor shared an id, so both were dropped
	// and b is added again.
	if st.ServicesChanged != 1 || st.ServicesAdded != 1 || st.ServicesRemoved != 0 {
		t.Errorf("Apply after re-read = %+v, want a rewritten and b added again", st)
	}
	if got := kernelServices(t, p); !reflect.DeepEqual(got, expected(want)) {
		t.Fatalf("maps hold\n%v\nwant\n%v", got, expected(want))
	}
}

func TestMetricsCountMapOperationsAndExportKernelCounters(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	opts := testOptions
	opts.Metrics = m
	dp := loadDatapath(t, opts)
	cfg := config(
		svc("10.96.0.1:80", model.Random, []model.Endpoint{ep("10.0.0.1:8080", 1), ep("10.0.0.2:8080", 1)}, []model.Endpoint{ep("10.0.0.1:8080", 1)}),
		svc("10.96.0.2:80", model.Random, []model.Endpoint{ep("10.0.0.3:8080", 1), ep("10.0.0.3:8080", 1)}),
	)
	st, err := dp.Programmer.Apply(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Enrollment.Enroll(42, NetnsOptions{}); err != nil {
		t.Fatal(err)
	}
	got := gather(t, reg)
	for name, want := range map[string]float64{
		"onehop_agent_programmed_services":                             2,
		"onehop_agent_programmed_endpoints":                            4, // distinct per service and priority level
		"onehop_agent_map_operations_total{map=oh_slots,op=update}":    float64(st.MapUpdates - 2),
		"onehop_agent_map_operations_total{map=oh_services,op=update}": 2,
		"onehop_agent_map_operations_total{map=oh_enrolled,op=update}": 1,
	} {
		if got[name] != want {
			t.Errorf("%s = %v, want %v", name, got[name], want)
		}
	}
	names, err := kernelCounterNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, ok := got["onehop_kernel_"+n+"_total"]; !ok {
			t.Errorf("kernel counter %s not exported; have %v", n, got)
		}
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := gather(t, reg)["onehop_kernel_connect_seen_total"]; ok {
		t.Error("kernel counters still exported after the datapath was closed")
	}
}

// gather returns every sample in reg by "name{label=value,...}".
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			out[name] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return out
}
