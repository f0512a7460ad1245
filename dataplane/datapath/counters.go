package datapath

import (
	"fmt"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/onehop-mesh/onehop/bpf"
)

// counterNames reads the oh_counters index names from enum oh_counter in the object's BTF, so the
// C header stays the one place they are written: OH_CNT_CONNECT_SEEN becomes "connect_seen".
// Enumerators at or past the map's size (OH_CNT_MAX) are not counters.
func counterNames(spec *ebpf.CollectionSpec) ([]string, error) {
	var enum *btf.Enum
	if err := spec.Types.TypeByName("oh_counter", &enum); err != nil {
		return nil, fmt.Errorf("find enum oh_counter in the BPF object's BTF: %w", err)
	}
	m := spec.Maps[bpf.OnehopMapOhCounters]
	if m == nil {
		return nil, fmt.Errorf("BPF object has no map %s", bpf.OnehopMapOhCounters)
	}
	names := make([]string, m.MaxEntries)
	for _, v := range enum.Values {
		if v.Value < uint64(len(names)) {
			names[v.Value] = strings.ToLower(strings.TrimPrefix(v.Name, "OH_CNT_"))
		}
	}
	for i, n := range names {
		if n == "" {
			return nil, fmt.Errorf("enum oh_counter has no name for %s index %d", bpf.OnehopMapOhCounters, i)
		}
	}
	return names, nil
}

// kernelCounterNames is counterNames of the embedded object, for metric descriptions before (or
// without) a Load.
var kernelCounterNames = sync.OnceValues(func() ([]string, error) {
	spec, err := bpf.LoadOnehop()
	if err != nil {
		return nil, err
	}
	return counterNames(spec)
})

// Counters returns the kernel counters (see enum oh_counter in bpf/onehop.h), summed over CPUs.
func (d *Datapath) Counters() (map[string]uint64, error) {
	out := make(map[string]uint64, len(d.counters))
	var perCPU []uint64
	for i, name := range d.counters {
		if err := d.objs.OhCounters.Lookup(uint32(i), &perCPU); err != nil {
			return nil, fmt.Errorf("read %s[%s]: %w", bpf.OnehopMapOhCounters, name, err)
		}
		var sum uint64
		for _, v := range perCPU {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}
