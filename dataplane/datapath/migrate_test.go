package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/onehop-mesh/onehop/bpf"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

func TestOldConnRecordsAreTheirLayouts(t *testing.T) {
	// struct oh_conn up to established_ns: two 20-byte endpoints, then two u64s; layout 3 added a
	// u64 and two u32s; layout 4 the telemetry fields.
	if n := binary.Size(connV1{}); n != 56 {
		t.Fatalf("connV1 is %d bytes, want 56", n)
	}
	if n := binary.Size(connV3{}); n != 72 {
		t.Fatalf("connV3 is %d bytes, want 72", n)
	}
	if n := binary.Size(bpf.OnehopOhConn{}); n != 136 {
		t.Fatalf("oh_conn is %d bytes, want 136: a layout change needs a new LayoutVersion", n)
	}
}

// sizesFor sizes map specs as Load does for opts.
func sizesFor(opts Options) map[string]uint32 {
	opts = opts.withDefaults()
	return map[string]uint32{
		bpf.OnehopMapOhServices: uint32(opts.MaxServices), bpf.OnehopMapOhRr: uint32(opts.MaxServices),
		bpf.OnehopMapOhSlots: uint32(opts.MaxSlots), bpf.OnehopMapOhConns: uint32(opts.MaxConns),
		bpf.OnehopMapOhOrigdst: uint32(opts.MaxConns), bpf.OnehopMapOhEnrolled: uint32(opts.MaxNetns),
	}
}

// Each older layout (maps from its description in olderLayouts, links pinned, a service, an
// enrolled netns, a connection record and its VIP, counts) is migrated by Load while a client
// connects: no connection fails, the entries are in the current layout's maps (the record
// converted, the counts carried into the bigger oh_counters), the same links run the new
// programs, and the old layout is gone.
func TestLoadMigratesOlderLayoutsWithoutInterruption(t *testing.T) {
	for from := 1; from < LayoutVersion; from++ {
		t.Run(fmt.Sprintf("from layout %d", from), func(t *testing.T) { testMigration(t, from) })
	}
}

func testMigration(t *testing.T, from int) {
	l := newWorld(t)
	l.pinDir = bpffsDir(t)
	bs := l.backends("127.0.0.2", "127.0.0.3")
	const vip = "10.96.200.1:80"
	svc := service(vip, model.RoundRobin, bs)

	// Layout 1's maps, pinned where layout 1 pins them.
	spec, err := bpf.LoadOnehop()
	if err != nil {
		t.Fatal(err)
	}
	v1 := layoutDir(l.pinDir, from)
	sizes := sizesFor(testOptions)
	old := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if internalMap(name) || olderLayouts[from][name].added {
			continue
		}
		if n := sizes[name]; n > 0 {
			ms.MaxEntries = n
		}
		v1spec := ms.Copy()
		if c, ok := olderLayouts[from][name]; ok && c.valueSize != 0 {
			v1spec.ValueSize, v1spec.Key, v1spec.Value = c.valueSize, nil, nil
		}
		if c, ok := olderLayouts[from][name]; ok && c.maxEntries != 0 {
			v1spec.MaxEntries = c.maxEntries
		}
		v1spec.Pinning = ebpf.PinByName
		if err := os.MkdirAll(filepath.Join(v1, "maps"), 0o700); err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.NewMapWithOptions(v1spec, ebpf.MapOptions{PinPath: filepath.Join(v1, "maps")})
		if err != nil {
			t.Fatalf("create layout 1 map %s: %v", name, err)
		}
		t.Cleanup(func() { m.Close() })
		old[name] = m
	}
	// Contents: a service (its maps did not change), an enrolled netns, a connection and its VIP.
	if _, err := newProgrammer(old[bpf.OnehopMapOhServices], old[bpf.OnehopMapOhSlots], old[bpf.OnehopMapOhRr], testOptions.withDefaults()).Apply(config(svc)); err != nil {
		t.Fatal(err)
	}
	if err := old[bpf.OnehopMapOhEnrolled].Put(l.cookie, uint8(1)); err != nil {
		t.Fatal(err)
	}
	rec := connV1{
		Src:   endpoint(netip.MustParseAddrPort("127.0.0.1:40000")),
		Dst:   endpoint(bs[0].addr),
		Netns: l.cookie, EstablishedNs: uint64(monotonic()) - uint64(time.Second),
	}
	const cookie = uint64(1) << 60 // no socket has it
	var put any = rec
	switch {
	case from >= 4: // today's record
		put = bpf.OnehopOhConn{Src: rec.Src, Dst: rec.Dst, Netns: rec.Netns, EstablishedNs: rec.EstablishedNs, StateNs: rec.EstablishedNs}
	case from > 1: // layout 3's record, its state unknown as a migrated layout 1 one
		put = connV3{connV1: rec, StateNs: rec.EstablishedNs}
	}
	if err := old[bpf.OnehopMapOhConns].Put(cookie, put); err != nil {
		t.Fatal(err)
	}
	if err := old[bpf.OnehopMapOhOrigdst].Put(cookie, endpoint(netip.MustParseAddrPort(vip))); err != nil {
		t.Fatal(err)
	}
	// Counts the old programs made, in layout 1's smaller oh_counters.
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	counted := make([]uint64, cpus)
	counted[0] = 1000
	if err := old[bpf.OnehopMapOhCounters].Put(uint32(0), counted); err != nil { // connect_seen
		t.Fatal(err)
	}

	// Layout 1's links: today's balancing programs on the layout 1 maps (all but oh_conns, whose
	// value they no longer fit: sockops gets a program that does nothing; and oh_counters,
	// smaller than today's programs count into).
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		bpf.OnehopMapOhServices: old[bpf.OnehopMapOhServices], bpf.OnehopMapOhSlots: old[bpf.OnehopMapOhSlots],
		bpf.OnehopMapOhRr: old[bpf.OnehopMapOhRr], bpf.OnehopMapOhEnrolled: old[bpf.OnehopMapOhEnrolled],
		bpf.OnehopMapOhOrigdst: old[bpf.OnehopMapOhOrigdst],
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	var objs bpf.OnehopObjects
	if err := coll.Assign(&objs); err != nil {
		t.Fatal(err)
	}
	defer objs.Close()
	cgroupID, err := cgroupIDOf(l.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	linkIDs := map[string]link.ID{}
	for _, p := range programs {
		prog := p.get(&objs.OnehopPrograms)
		if p.attach == ebpf.AttachCGroupSockOps {
			prog = passProgram(t, p.attach)
		}
		lk, err := link.AttachCgroup(link.CgroupOptions{Path: l.cgroup, Attach: p.attach, Program: prog})
		if err != nil {
			t.Fatal(err)
		}
		path := linkPin(v1, cgroupID, p)
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := lk.Pin(path); err != nil {
			t.Fatal(err)
		}
		info, _ := lk.Info()
		linkIDs[p.pin] = info.ID
		lk.Close()
	}
	objs.Close()
	byBackend(t, l.connects(clientJob{Target: vip, Count: 4})) // layout 1 balances

	c := l.start(clientJob{Target: vip, Until: true, Pause: 200 * time.Microsecond})
	time.Sleep(50 * time.Millisecond)
	start := monotonic()
	l.open(testOptions)
	end := monotonic()
	time.Sleep(50 * time.Millisecond)
	rs := c.wait(t)
	byBackend(t, rs) // fails on any failed connection
	during := 0
	for _, r := range rs {
		if r.Start >= start && r.End <= end {
			during++
		}
	}
	t.Logf("%d connections, %d of them during the %v migration, none failed; %+v",
		len(rs), during, time.Duration(end-start), l.dp.Adopted())

	a := l.dp.Adopted()
	if a.Layout != from || len(a.Links) != 5 || a.Services != 1 || !slices.Equal(a.Enrolled, []uint64{l.cookie}) || a.Conns < 1 {
		t.Errorf("Adopted() = %+v, want layout %d migrated with 5 links, 1 service, netns %d enrolled, the connection record", a, from, l.cookie)
	}
	cur := fmt.Sprintf("v%d", LayoutVersion)
	if left := pins(t, l.pinDir); slices.ContainsFunc(left, func(p string) bool { return !strings.HasPrefix(p, cur) || strings.HasPrefix(p, cur+"-") }) {
		t.Errorf("after the migration %s holds %v, want only %s", l.pinDir, left, cur)
	}
	if cnt, err := l.dp.Counters(); err != nil || cnt["connect_seen"] < 1000 {
		t.Errorf("counters after the migration %v (%v): want layout %d's 1000 connect_seen carried over", cnt, err, from)
	}
	for _, p := range programs {
		lk, err := link.LoadPinnedLink(linkPin(layoutDir(l.pinDir, LayoutVersion), cgroupID, p), nil)
		if err != nil {
			t.Fatalf("%s link is not pinned in layout %d: %v", p.section, LayoutVersion, err)
		}
		info, _ := lk.Info()
		lk.Close()
		want, _ := p.get(&l.dp.objs.OnehopPrograms).Info()
		wantID, _ := want.ID()
		if info.ID != linkIDs[p.pin] || info.Program != wantID {
			t.Errorf("%s: link %d runs program %d, want the same link %d running the new program %d", p.section, info.ID, info.Program, linkIDs[p.pin], wantID)
		}
	}
	if ids := l.attachedIDs(); len(ids) != 5 {
		t.Errorf("attached after the migration: %v, want one program per attach type", ids)
	}
	var got bpf.OnehopOhConn
	if err := l.dp.objs.OhConns.Lookup(cookie, &got); err != nil {
		t.Fatalf("the connection record was not migrated: %v", err)
	}
	want := bpf.OnehopOhConn{Src: rec.Src, Dst: rec.Dst, Netns: rec.Netns, EstablishedNs: rec.EstablishedNs, StateNs: rec.EstablishedNs}
	if got != want {
		t.Errorf("migrated record %+v, want %+v", got, want)
	}
	conns, _ := l.dp.Conns()
	if i := slices.IndexFunc(conns, func(c Conn) bool { return c.Cookie == cookie }); i < 0 || conns[i].VIP.String() != vip || conns[i].State != 0 {
		t.Errorf("Conns() = %+v, want the migrated connection %d to %s in an unknown state", conns, cookie, vip)
	}
	if st := l.apply(svc); st != (ApplyStats{}) {
		t.Errorf("first Apply after the migration: %+v, want nothing to do", st)
	}
	rs = l.connects(clientJob{Target: vip, Count: 4})
	for _, r := range rs {
		if r.Err != "" || r.Peer != vip {
			t.Fatalf("after the migration: %+v, want a balanced connection with peer %s", r, vip)
		}
	}
	if n := mapLen(t, l.dp.objs.OhConns); n != 1 {
		t.Errorf("oh_conns holds %d records, want the migrated one only (the others closed)", n)
	}
}

// What sits at one of onehop's pin paths but is not what onehop pins there, or a layout newer
// than this agent's, is refused with an error naming it and what to do, and the datapath an
// earlier agent left attached is not touched: it keeps balancing.
func TestLoadRefusesForeignPinsAndChangesNothing(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	bs := l.backends("127.0.0.2")
	const vip = "10.96.200.1:80"
	l.apply(service(vip, model.Random, bs))
	if err := l.dp.Close(); err != nil {
		t.Fatal(err)
	}
	l.dp = nil
	before := l.attachedIDs()
	v2 := layoutDir(l.pinDir, LayoutVersion)
	cgroupID, _ := cgroupIDOf(l.cgroup)
	pinMap := func(path string, spec *ebpf.MapSpec) {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		os.MkdirAll(filepath.Dir(path), 0o700)
		if err := m.Pin(path); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, path string
		put        func(path string) (undo func())
		want       string
	}{
		{"a map with another value size", filepath.Join(v2, "maps", bpf.OnehopMapOhConns), func(path string) func() {
			orig, err := ebpf.LoadPinnedMap(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			keep, _ := orig.Clone()
			orig.Close()
			os.Remove(path)
			pinMap(path, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 16, MaxEntries: 16})
			return func() {
				os.Remove(path)
				if err := keep.Pin(path); err != nil {
					t.Fatal(err)
				}
				keep.Close()
			}
		}, "ValueSize"},
		{"a map where a link belongs", linkPin(v2, cgroupID+1, programs[0]), func(path string) func() {
			pinMap(path, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
			return func() { os.RemoveAll(filepath.Dir(path)) }
		}, "not a usable BPF link"},
		{"a newer layout", layoutDir(l.pinDir, LayoutVersion+1), func(path string) func() {
			os.Mkdir(path, 0o700)
			return func() { os.Remove(path) }
		}, "newer onehop-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			undo := tc.put(tc.path)
			defer undo()
			dp, err := Load(Options{MaxServices: 64, MaxSlots: 4096, MaxConns: 1024, MaxNetns: 16, PinDir: l.pinDir})
			if err == nil {
				dp.Close()
				t.Fatal("Load succeeded")
			}
			t.Log(err)
			for _, s := range []string{tc.path, tc.want, "onehop-agent --uninstall --bpffs " + l.pinDir, "nothing was changed"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Load error %q does not say %q", err, s)
				}
			}
			if now := l.attachedIDs(); !mapsEqual(now, before) {
				t.Errorf("attached programs changed from %v to %v", before, now)
			}
			for _, r := range l.connects(clientJob{Target: vip, Count: 4}) {
				if r.Err != "" || r.Backend != "b0" {
					t.Fatalf("after the refused Load: %+v, want a balanced connection", r)
				}
			}
		})
	}
	l.open(testOptions) // with the foreign objects gone, the earlier datapath is adopted
	if a := l.dp.Adopted(); a.Layout != LayoutVersion || len(a.Links) != 6 {
		t.Errorf("Adopted() = %+v after the foreign objects were removed", a)
	}
}

func mapsEqual(a, b map[ebpf.AttachType][]ebpf.ProgramID) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}
