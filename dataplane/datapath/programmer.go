package datapath

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/onehop-mesh/onehop/bpf"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

// Programmer owns oh_services, oh_slots and oh_rr and makes them match a model.Config, as a diff
// against what it programmed before: services that did not change are not touched, and a VIP
// never goes missing or empty while its endpoints change.
//
// A changed service gets its new slots under the generation it does not use, then one update of
// its oh_services value switches generation and slot counts together, then the old slots go.
type Programmer struct {
	services, slots, rr   *ebpf.Map
	maxServices, maxSlots int
	metrics               *Metrics

	mu    sync.Mutex
	view  map[model.Key]*programmed // what the maps hold
	free  []uint32                  // unused service ids; the lowest is last
	used  int                       // entries in oh_slots
	stale bool                      // a map update failed: view may be wrong, re-read the maps
	now   Programmed
}

// Programmed is a summary of what the maps hold, for status pages.
type Programmed struct {
	Services  int    `json:"services"`
	Endpoints int    `json:"endpoints"`
	Applies   uint64 `json:"applies"` // Apply and ApplyChanged calls so far
}

// Programmed returns what the maps hold after the last Apply.
func (p *Programmer) Programmed() Programmed {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.now
}

// programmed is one service as the maps hold it.
type programmed struct {
	id        uint32
	gen       uint8
	policy    model.Policy
	prios     [][]model.Endpoint // what it was programmed from; nil after a re-read of the maps
	slots     [model.MaxPriorities][]netip.AddrPort
	present   int  // its entries in oh_slots
	endpoints int  // distinct endpoints over its priorities, for the metrics
	broken    bool // slots are missing from the maps: rewrite it
}

// distinctEndpoints counts each priority's distinct endpoints (slots repeat weighted ones).
func distinctEndpoints(slots *[model.MaxPriorities][]netip.AddrPort) int {
	n := 0
	for _, addrs := range slots {
		seen := make(map[netip.AddrPort]bool, len(addrs))
		for _, a := range addrs {
			seen[a] = true
		}
		n += len(seen)
	}
	return n
}

// ApplyStats says what one Apply did.
type ApplyStats struct {
	ServicesAdded, ServicesChanged, ServicesRemoved int
	MapUpdates, MapDeletes                          int // elements written and deleted, all maps
}

func newProgrammer(services, slots, rr *ebpf.Map, opts Options) *Programmer {
	p := &Programmer{
		services: services, slots: slots, rr: rr,
		maxServices: opts.MaxServices, maxSlots: opts.MaxSlots,
		metrics: opts.Metrics,
		view:    map[model.Key]*programmed{},
	}
	p.free = freeIDs(opts.MaxServices, nil)
	return p
}

func freeIDs(n int, used map[uint32]*programmed) []uint32 {
	free := make([]uint32, 0, n-len(used))
	for id := uint32(n); id > 0; id-- {
		if used[id-1] == nil {
			free = append(free, id-1)
		}
	}
	return free
}

// change is a service to add (old nil) or rewrite.
type change struct {
	svc   model.Service
	slots [model.MaxPriorities][]netip.AddrPort
	old   *programmed
	id    uint32
	gen   uint8
}

type plan struct {
	removed []model.Key
	groups  [][]*change // each group's new slots fit in oh_slots next to everything before it
	adopt   []adoption
}

// adoption is a service whose endpoints are listed differently but expand to the same slots.
type adoption struct {
	ps    *programmed
	prios [][]model.Endpoint
}

// Apply makes the maps hold exactly cfg. Every service is validated first; if any is invalid or
// the maps cannot hold cfg, nothing is changed and the error names the service. If a map update
// fails halfway, the error says so and the next Apply re-reads the maps and repairs them.
func (p *Programmer) Apply(cfg model.Config) (ApplyStats, error) {
	return p.apply(cfg, nil)
}

// ApplyChanged is Apply for a cfg that differs from what the maps hold only in the services
// listed (present in cfg: added or changed; absent: removed): it diffs just those, so its cost
// follows the change rather than the size of cfg. The guarantees are Apply's. After a failed
// map update, or with changed nil, it diffs all of cfg.
func (p *Programmer) ApplyChanged(cfg model.Config, changed []model.Key) (ApplyStats, error) {
	return p.apply(cfg, changed)
}

func (p *Programmer) apply(cfg model.Config, only []model.Key) (ApplyStats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st ApplyStats
	if p.stale {
		if err := p.resync(&st); err != nil {
			return st, fmt.Errorf("apply: re-read the maps after an earlier failure: %w", err)
		}
		only = nil // the view was rebuilt from the maps: compare all of it
	}
	pl, err := p.plan(cfg, only)
	if err != nil {
		return st, fmt.Errorf("apply: %w (nothing was changed)", err)
	}
	err = p.execute(pl, &st)
	p.now.Services, p.now.Endpoints = len(p.view), 0
	for _, ps := range p.view {
		p.now.Endpoints += ps.endpoints
	}
	p.now.Applies++
	p.metrics.programmed(p.now)
	if err != nil {
		p.stale = true
		return st, fmt.Errorf("apply: %w (the next Apply re-reads the maps and repairs them)", err)
	}
	return st, nil
}

func compareKeys(a, b model.Key) int {
	return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Proto, b.Proto))
}

// check validates what the kernel maps need beyond model.Service.Validate.
func check(k model.Key, svc model.Service) error {
	if svc.Key != k {
		return fmt.Errorf("service %s: listed under %s but its key is %s", svc.Name, k, svc.Key)
	}
	if err := svc.Validate(); err != nil {
		return err
	}
	if k.VIP.Is4In6() || k.VIP.Zone() != "" {
		return fmt.Errorf("service %s (%s): write the VIP as plain IPv4 or IPv6 (no v4-mapped form, no zone)", svc.Name, k)
	}
	if k.Proto != model.TCP && k.Proto != model.UDP {
		return fmt.Errorf("service %s (%s): protocol %d is neither TCP nor UDP", svc.Name, k, k.Proto)
	}
	if _, ok := kernelPolicy(svc.Policy); !ok {
		return fmt.Errorf("service %s (%s): policy %s is not implemented in the kernel programs", svc.Name, k, svc.Policy)
	}
	for _, eps := range svc.Priorities {
		for _, e := range eps {
			if a := e.Addr.Addr(); e.Addr.Port() == 0 || a.Zone() != "" || a.Is4In6() {
				return fmt.Errorf("service %s (%s): endpoint %s needs a port, no zone and no v4-mapped form", svc.Name, k, e.Addr)
			}
		}
	}
	return nil
}

func (c *change) nslots() int {
	n := 0
	for _, s := range c.slots {
		n += len(s)
	}
	return n
}

func sameSlots(a, b *[model.MaxPriorities][]netip.AddrPort) bool {
	for i := range a {
		if !slices.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// plan validates cfg, diffs it against the view and checks it fits the maps. It changes nothing.
// With only set, it looks at those keys alone: the rest of cfg is what the view holds.
func (p *Programmer) plan(cfg model.Config, only []model.Key) (*plan, error) {
	pl := &plan{}
	var (
		changed, added []*change
		invalid        *model.Key // the lowest, so the error is the same every time
		invalidErr     error
	)
	consider := func(k model.Key, svc model.Service) {
		if err := check(k, svc); err != nil {
			if invalid == nil || compareKeys(k, *invalid) < 0 {
				invalid, invalidErr = &k, err
			}
			return
		}
		old := p.view[k]
		same := old != nil && !old.broken && old.policy == svc.Policy
		if same && old.prios != nil && slices.EqualFunc(old.prios, svc.Priorities, slices.Equal) {
			return
		}
		c := &change{svc: svc, old: old}
		for i, eps := range svc.Priorities {
			c.slots[i] = model.Slots(eps)
		}
		switch {
		case same && sameSlots(&old.slots, &c.slots):
			pl.adopt = append(pl.adopt, adoption{old, cloneEndpoints(svc.Priorities)})
		case old == nil:
			added = append(added, c)
		default:
			changed = append(changed, c)
		}
	}
	used := p.used
	removed := func(k model.Key) {
		if ps, ok := p.view[k]; ok {
			pl.removed = append(pl.removed, k)
			used -= ps.present
		}
	}
	if only == nil {
		for k, svc := range cfg.Services {
			consider(k, svc)
		}
		for k := range p.view {
			if _, ok := cfg.Services[k]; !ok {
				removed(k)
			}
		}
	} else {
		for _, k := range slices.Compact(slices.SortedFunc(slices.Values(only), compareKeys)) {
			if svc, ok := cfg.Services[k]; ok {
				consider(k, svc)
			} else {
				removed(k)
			}
		}
	}
	if invalidErr != nil {
		return nil, invalidErr
	}
	byKey := func(a, b *change) int { return compareKeys(a.svc.Key, b.svc.Key) }
	slices.SortFunc(changed, byKey)
	slices.SortFunc(added, byKey)

	slices.SortFunc(pl.removed, compareKeys)
	if n := len(p.view) - len(pl.removed) + len(added); n > p.maxServices {
		return nil, fmt.Errorf("%d services do not fit in %s (max %d; raise Options.MaxServices)", n, bpf.OnehopMapOhServices, p.maxServices)
	}

	// Changed services first: shrinking ones make room for new ones.
	var (
		group              []*change
		groupNew, groupOld int
	)
	for _, c := range append(changed, added...) {
		need := c.nslots()
		if used+groupNew+need > p.maxSlots && len(group) > 0 {
			pl.groups = append(pl.groups, group)
			used += groupNew - groupOld
			group, groupNew, groupOld = nil, 0, 0
		}
		if used+need > p.maxSlots {
			return nil, fmt.Errorf("service %s (%s): its %d slots do not fit in %s next to the %d in use (max %d; raise Options.MaxSlots)",
				c.svc.Name, c.svc.Key, need, bpf.OnehopMapOhSlots, used, p.maxSlots)
		}
		group = append(group, c)
		groupNew += need
		if c.old != nil {
			groupOld += c.old.present
		}
	}
	if len(group) > 0 {
		pl.groups = append(pl.groups, group)
	}
	return pl, nil
}

func cloneEndpoints(prios [][]model.Endpoint) [][]model.Endpoint {
	out := make([][]model.Endpoint, len(prios))
	for i, eps := range prios {
		out[i] = slices.Clone(eps)
	}
	return out
}

func (p *Programmer) execute(pl *plan, st *ApplyStats) error {
	for _, a := range pl.adopt {
		a.ps.prios = a.prios
	}
	if err := p.remove(pl.removed, st); err != nil {
		return err
	}
	for _, g := range pl.groups {
		if err := p.program(g, st); err != nil {
			return err
		}
	}
	return nil
}

func slotKeys(keys []bpf.OnehopOhSlotKey, id uint32, gen uint8, slots *[model.MaxPriorities][]netip.AddrPort) []bpf.OnehopOhSlotKey {
	for prio, addrs := range slots {
		for i := range addrs {
			keys = append(keys, bpf.OnehopOhSlotKey{Id: id, Gen: gen, Prio: uint8(prio), Slot: uint16(i)})
		}
	}
	return keys
}

// remove deletes services: the service key first, so no connect picks their slots any more.
func (p *Programmer) remove(keys []model.Key, st *ApplyStats) error {
	if len(keys) == 0 {
		return nil
	}
	svcKeys := make([]bpf.OnehopOhSvcKey, len(keys))
	ids := make([]uint32, len(keys))
	var slotKs []bpf.OnehopOhSlotKey
	for i, k := range keys {
		ps := p.view[k]
		svcKeys[i], ids[i] = svcKey(k), ps.id
		slotKs = slotKeys(slotKs, ps.id, ps.gen, &ps.slots)
	}
	n, failed, err := batchDelete(p.services, bpf.OnehopMapOhServices, p.metrics, svcKeys)
	st.MapDeletes += n
	if err != nil {
		return fmt.Errorf("delete service %s from %s: %w", keys[failed], bpf.OnehopMapOhServices, err)
	}
	n, failed, err = batchDelete(p.slots, bpf.OnehopMapOhSlots, p.metrics, slotKs)
	st.MapDeletes += n
	p.used -= n
	if err != nil {
		return fmt.Errorf("delete slots of removed service id %d from %s: %w", slotKs[failed].Id, bpf.OnehopMapOhSlots, err)
	}
	// oh_rr is an array: zero the position so the id starts afresh when it is reused.
	n, err = batchUpdate(p.rr, bpf.OnehopMapOhRr, p.metrics, ids, make([]uint64, len(ids)))
	st.MapUpdates += n
	if err != nil {
		return fmt.Errorf("reset round-robin position of removed service %s in %s: %w", keys[n], bpf.OnehopMapOhRr, err)
	}
	for _, k := range keys {
		p.free = append(p.free, p.view[k].id)
		delete(p.view, k)
	}
	st.ServicesRemoved += len(keys)
	return nil
}

// program adds or rewrites a group of services: all their new slots, then all their service
// values (each one atomic), then the slots of the generations they left.
func (p *Programmer) program(group []*change, st *ApplyStats) error {
	var (
		slotKs   []bpf.OnehopOhSlotKey
		slotVs   []bpf.OnehopOhEndpoint
		oldKs    []bpf.OnehopOhSlotKey
		svcKs    = make([]bpf.OnehopOhSvcKey, len(group))
		svcVs    = make([]bpf.OnehopOhSvc, len(group))
		slotsEnd = make([]int, len(group)) // group[i]'s slots end at slotKs[slotsEnd[i]]
	)
	for i, c := range group {
		if c.old == nil {
			c.id, c.gen = p.free[len(p.free)-1], 0
			p.free = p.free[:len(p.free)-1]
		} else {
			c.id, c.gen = c.old.id, 1-c.old.gen
			oldKs = slotKeys(oldKs, c.old.id, c.old.gen, &c.old.slots)
		}
		slotKs = slotKeys(slotKs, c.id, c.gen, &c.slots)
		for _, addrs := range c.slots {
			for _, a := range addrs {
				slotVs = append(slotVs, endpoint(a))
			}
		}
		slotsEnd[i] = len(slotKs)
		policy, _ := kernelPolicy(c.svc.Policy) // check accepted it
		svcKs[i] = svcKey(c.svc.Key)
		svcVs[i] = bpf.OnehopOhSvc{Id: c.id, Policy: policy, Gen: c.gen}
		for prio, addrs := range c.slots {
			svcVs[i].Count[prio] = uint16(len(addrs))
		}
	}

	n, err := batchUpdate(p.slots, bpf.OnehopMapOhSlots, p.metrics, slotKs, slotVs)
	st.MapUpdates += n
	p.used += n
	if err != nil {
		c := group[sort.SearchInts(slotsEnd, n+1)]
		return fmt.Errorf("write slots of service %s (%s) to %s: %w", c.svc.Name, c.svc.Key, bpf.OnehopMapOhSlots, err)
	}
	n, err = batchUpdate(p.services, bpf.OnehopMapOhServices, p.metrics, svcKs, svcVs)
	st.MapUpdates += n
	if err != nil {
		return fmt.Errorf("write service %s (%s) to %s: %w", group[n].svc.Name, group[n].svc.Key, bpf.OnehopMapOhServices, err)
	}
	n, failed, err := batchDelete(p.slots, bpf.OnehopMapOhSlots, p.metrics, oldKs)
	st.MapDeletes += n
	p.used -= n
	if err != nil {
		return fmt.Errorf("delete old slots of service id %d from %s: %w", oldKs[failed].Id, bpf.OnehopMapOhSlots, err)
	}

	for _, c := range group {
		ps := c.old
		if ps == nil {
			ps = &programmed{}
			p.view[c.svc.Key] = ps
			st.ServicesAdded++
		} else {
			st.ServicesChanged++
		}
		*ps = programmed{
			id: c.id, gen: c.gen, policy: c.svc.Policy,
			prios: cloneEndpoints(c.svc.Priorities), slots: c.slots, present: c.nslots(),
			endpoints: distinctEndpoints(&c.slots),
		}
	}
	return nil
}

// resync rebuilds the view from the maps and deletes what no service uses: slots of unknown
// services or of the generation a service does not use, and service values that cannot be
// right. A service with live slots missing is marked broken, so the plan rewrites it.
func (p *Programmer) resync(st *ApplyStats) error {
	view := map[model.Key]*programmed{}
	byID := map[uint32]*programmed{}
	type entry struct {
		k bpf.OnehopOhSvcKey
		v bpf.OnehopOhSvc
	}
	var (
		entries []entry
		e       entry
		badSvcs []bpf.OnehopOhSvcKey
	)
	ids := map[uint32]int{}
	it := p.services.Iterate()
	for it.Next(&e.k, &e.v) {
		entries = append(entries, e)
		ids[e.v.Id]++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.OnehopMapOhServices, err)
	}
	for _, e := range entries {
		policy, ok := modelPolicy(e.v.Policy)
		// Services sharing an id cannot both be right: drop all of them, the plan re-adds what
		// the config has.
		if !ok || int(e.v.Id) >= p.maxServices || ids[e.v.Id] > 1 || e.v.Gen > 1 {
			badSvcs = append(badSvcs, e.k)
			continue
		}
		ps := &programmed{id: e.v.Id, gen: e.v.Gen, policy: policy}
		for prio, n := range e.v.Count {
			ps.slots[prio] = make([]netip.AddrPort, n)
		}
		view[modelKey(e.k)], byID[e.v.Id] = ps, ps
	}

	var (
		stale []bpf.OnehopOhSlotKey
		sk    bpf.OnehopOhSlotKey
		be    bpf.OnehopOhEndpoint
		used  int
	)
	it = p.slots.Iterate()
	for it.Next(&sk, &be) {
		ps := byID[sk.Id]
		if ps == nil || sk.Gen != ps.gen || int(sk.Prio) >= len(ps.slots) || int(sk.Slot) >= len(ps.slots[sk.Prio]) {
			stale = append(stale, sk)
			continue
		}
		ps.slots[sk.Prio][sk.Slot] = addrPort(be)
		ps.present++
		used++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", bpf.OnehopMapOhSlots, err)
	}
	for _, ps := range view {
		for _, addrs := range ps.slots {
			if slices.Contains(addrs, netip.AddrPort{}) {
				ps.broken = true
			}
		}
		ps.endpoints = distinctEndpoints(&ps.slots)
	}

	n, _, err := batchDelete(p.services, bpf.OnehopMapOhServices, p.metrics, badSvcs)
	st.MapDeletes += n
	if err != nil {
		return fmt.Errorf("delete invalid entries from %s: %w", bpf.OnehopMapOhServices, err)
	}
	n, _, err = batchDelete(p.slots, bpf.OnehopMapOhSlots, p.metrics, stale)
	st.MapDeletes += n
	if err != nil {
		return fmt.Errorf("delete unused entries from %s: %w", bpf.OnehopMapOhSlots, err)
	}
	p.view, p.used, p.stale = view, used, false
	p.free = freeIDs(p.maxServices, byID)
	return nil
}
