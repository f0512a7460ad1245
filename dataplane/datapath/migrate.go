package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/onehop-mesh/onehop/bpf"
)

// connV1 is struct oh_conn of pin layout 1, which ended at established_ns; connV3, of layouts 2
// and 3, ended at state_changes. The generated bindings describe only the current layout; these
// are the one description of the old ones.
type connV1 struct {
	Src, Dst      bpf.OnehopOhEndpoint
	Netns         uint64
	EstablishedNs uint64
}

type connV3 struct {
	connV1
	StateNs      uint64
	State        uint32
	StateChanges uint32
}

// olderLayouts describes the layouts Load migrates from, by how their maps differ from the
// current ones. A map not listed is unchanged: the migration carries the kernel object itself
// over (pinned again in the new layout), so nothing the programs write meanwhile is lost. A
// listed map is created anew and its entries are converted (or, if added, created empty).
var olderLayouts = map[int]map[string]mapChange{
	1: {
		bpf.OnehopMapOhConns: {
			valueSize: uint32(binary.Size(connV1{})),
			copier: func() copier {
				return converter[uint64](func(c connV1) bpf.OnehopOhConn {
					// The state is unknown (0) until the connection's next state change.
					return bpf.OnehopOhConn{Src: c.Src, Dst: c.Dst, Netns: c.Netns, EstablishedNs: c.EstablishedNs, StateNs: c.EstablishedNs}
				})
			},
		},
		bpf.OnehopMapOhCounters: {maxEntries: 10, copier: addCounts},
		bpf.OnehopMapOhEvents:   added,
	},
	2: {bpf.OnehopMapOhConns: connsV3, bpf.OnehopMapOhCounters: {maxEntries: 10, copier: addCounts}, bpf.OnehopMapOhEvents: added},
	3: {bpf.OnehopMapOhConns: connsV3, bpf.OnehopMapOhCounters: {maxEntries: 11, copier: addCounts}, bpf.OnehopMapOhEvents: added},
	4: {bpf.OnehopMapOhCounters: {maxEntries: 13, copier: addCounts}},
}

// Layout 5 added same-node acceleration's maps: every older layout lacks them.
func init() {
	for v := 1; v <= 4; v++ {
		for _, m := range []string{bpf.OnehopMapOhSockhash, bpf.OnehopMapOhLocalAddrs, bpf.OnehopMapOhRedirectedBytes} {
			olderLayouts[v][m] = added
		}
	}
}

// connsV3 converts oh_conns of layouts 2 and 3: the connection's direction and VIP are unknown
// and it has no telemetry (its socket never asked for RTT callbacks).
var connsV3 = mapChange{
	valueSize: uint32(binary.Size(connV3{})),
	copier: func() copier {
		return converter[uint64](func(c connV3) bpf.OnehopOhConn {
			return bpf.OnehopOhConn{Src: c.Src, Dst: c.Dst, Netns: c.Netns, EstablishedNs: c.EstablishedNs,
				StateNs: c.StateNs, State: c.State, StateChanges: c.StateChanges}
		})
	},
}

// added marks a map the old layout did not have.
var added = mapChange{added: true}

type mapChange struct {
	added      bool   // not in the old layout (no pin to open): created empty
	valueSize  uint32 // in the old layout; 0: unchanged
	maxEntries uint32 // in the old layout, for a map whose size is the layout's (not Options'); 0: unchanged
	copier     func() copier
}

// addCounts carries per-CPU counters over: after the switch, when the old programs count no
// more, each old count is added to what the new programs counted meanwhile. Before the
// switch it does nothing, as the old programs are still counting.
func addCounts() copier {
	switched := false
	return func(old, new *ebpf.Map) error {
		if !switched {
			switched = true
			return nil
		}
		for i := uint32(0); i < min(old.MaxEntries(), new.MaxEntries()); i++ {
			var was, now []uint64
			if err := old.Lookup(i, &was); err != nil {
				return err
			}
			if err := new.Lookup(i, &now); err != nil {
				return err
			}
			for c := range min(len(was), len(now)) {
				now[c] += was[c]
			}
			if err := new.Update(i, now, ebpf.UpdateAny); err != nil {
				return err
			}
		}
		return nil
	}
}

// copier copies the entries of a map of the old layout into the new one, converted. A
// migration calls it before the links switch programs, for the bulk, and once more after, for
// what the old programs changed in between.
type copier func(old, new *ebpf.Map) error

func converter[K comparable, V, W any](conv func(V) W) copier {
	copied := map[K]bool{}
	return func(old, new *ebpf.Map) error {
		var (
			k K
			v V
		)
		now := map[K]bool{}
		it := old.Iterate()
		for it.Next(&k, &v) {
			now[k] = true
			if copied[k] {
				continue // the new programs may have updated it since: theirs is newer
			}
			if err := new.Update(k, conv(v), ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
				return err
			}
			copied[k] = true
		}
		if err := it.Err(); err != nil {
			return err
		}
		for k := range copied {
			if !now[k] { // deleted by the old programs since it was copied: a connection closed
				if err := new.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
				delete(copied, k)
			}
		}
		return nil
	}
}

// migrate moves pin layout `from` to the current one with traffic balanced throughout. The new
// programs are loaded against the old layout's unchanged maps and new ones for the changed maps,
// whose entries are converted; all maps are pinned in v<N>-partial; then each pinned link is
// switched to its new program (bpf_link_update) and pinned there too; entries the old programs
// changed meanwhile are copied; v<N>-partial is renamed v<N> and the old layout's pins removed.
// Until the rename only pins are added, so an interruption leaves the old layout whole for the
// next start to migrate again (losing at most connection records written in between).
func (d *Datapath) migrate(spec *ebpf.CollectionSpec, sized map[string]bool, from int, partial []string) error {
	oldDir, newDir := layoutDir(d.pinDir, from), layoutDir(d.pinDir, LayoutVersion)
	staging := newDir + "-partial"
	changes := olderLayouts[from]
	old := map[string]*ebpf.Map{}
	defer closeMaps(old)
	keep := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if internalMap(name) {
			continue
		}
		oldSpec := ms.Copy()
		c, changed := changes[name]
		if changed && c.valueSize != 0 {
			oldSpec.ValueSize, oldSpec.Value = c.valueSize, nil
		}
		if changed && c.maxEntries != 0 {
			oldSpec.MaxEntries = c.maxEntries
		}
		m, err := d.openPinnedMap(filepath.Join(oldDir, "maps", name), oldSpec, sized[name])
		if err != nil {
			return err
		}
		if m == nil {
			continue // missing from the old layout: created empty
		}
		old[name] = m
		if !changed || c.maxEntries == 0 {
			ms.MaxEntries = oldSpec.MaxEntries // a pinned map's size stays, unless the layout's changed it
		}
		if !changed {
			keep[name] = m
		}
	}
	links, err := d.openPinnedLinks(oldDir)
	if err != nil {
		return err
	}
	// An earlier attempt's staging holds only extra pins of what the old layout holds.
	for _, p := range partial {
		if err := removeTree(p, false, nil); err != nil {
			closeLinks(links)
			return fmt.Errorf("load onehop datapath: remove %s, left by an interrupted migration: %w", p, err)
		}
	}
	if err := d.load(spec, ebpf.CollectionOptions{MapReplacements: keep}); err != nil {
		closeLinks(links)
		return err
	}
	fail := func(err error) error {
		closeLinks(links)
		d.Close()
		return fmt.Errorf("load onehop datapath: migrate %s to layout %d: %w (the next start migrates again)", oldDir, LayoutVersion, err)
	}
	copiers := map[string]copier{}
	for name, c := range changes {
		if old[name] != nil && c.copier != nil {
			copiers[name] = c.copier()
			if err := copiers[name](old[name], d.maps[name]); err != nil {
				return fail(fmt.Errorf("copy %s: %w", name, err))
			}
		}
	}
	if err := os.MkdirAll(filepath.Join(staging, "maps"), 0o700); err != nil {
		return fail(err)
	}
	for name, m := range d.maps {
		if err := m.Pin(filepath.Join(staging, "maps", name)); err != nil {
			return fail(fmt.Errorf("pin %s: %w", name, err))
		}
	}

	// From here on the new programs run, on the new maps.
	first := len(d.links)
	if err := d.switchLinks(links); err != nil {
		return fail(err)
	}
	for i := first; i < len(d.links); i++ {
		a := &d.links[i]
		if err := pinAgain(a.link, linkPin(staging, a.cgroupID, a.prog)); err != nil {
			return fail(err)
		}
		a.pin = linkPin(newDir, a.cgroupID, a.prog)
	}
	for name, cp := range copiers {
		if err := cp(old[name], d.maps[name]); err != nil {
			return fail(fmt.Errorf("copy %s after the switch: %w", name, err))
		}
	}
	if err := os.Rename(staging, newDir); err != nil {
		return fail(err)
	}
	if err := removeTree(oldDir, false, nil); err != nil {
		d.note("removing layout %d: %v", from, err)
	}
	d.note("migrated pin layout %d to %d", from, LayoutVersion)
	return nil
}

// pinAgain pins l at path as well: Pin on l itself would move its pin.
func pinAgain(l link.Link, path string) error {
	info, err := l.Info()
	if err != nil {
		return err
	}
	again, err := link.NewFromID(info.ID)
	if err != nil {
		return err
	}
	defer again.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return again.Pin(path)
}
