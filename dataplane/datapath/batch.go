package datapath

import (
	"errors"

	"github.com/cilium/ebpf"
)

// batchUpdate writes keys[i] -> values[i] into m (named name for metrics) in one BPF_MAP_UPDATE_BATCH
// call, or element by element where the kernel lacks batch operations. It returns how many
// elements were written; on error, keys[n] is the one that failed.
func batchUpdate[K, V any](m *ebpf.Map, name string, mt *Metrics, keys []K, values []V) (n int, err error) {
	if len(keys) == 0 {
		return 0, nil
	}
	defer func() { mt.mapOp(name, "update", n, err) }()
	n, err = m.BatchUpdate(keys, values, nil)
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return n, err
	}
	for n = 0; n < len(keys); n++ {
		if err = m.Update(&keys[n], &values[n], ebpf.UpdateAny); err != nil {
			return n, err
		}
	}
	return n, nil
}

// batchDelete deletes keys from m, skipping keys that are not there. It returns how many
// elements it deleted; on error, keys[failed] is the one that failed.
func batchDelete[K any](m *ebpf.Map, name string, mt *Metrics, keys []K) (n, failed int, err error) {
	defer func() { mt.mapOp(name, "delete", n, err) }()
	for start := 0; start < len(keys); {
		done, berr := m.BatchDelete(keys[start:], nil)
		if errors.Is(berr, ebpf.ErrNotSupported) {
			return deleteEach(m, keys, n, start)
		}
		n += done
		start += done
		switch {
		case errors.Is(berr, ebpf.ErrKeyNotExist):
			start++ // the batch stopped at a missing key: skip it
		case berr != nil:
			return n, start, berr
		}
	}
	return n, 0, nil
}

func deleteEach[K any](m *ebpf.Map, keys []K, n, start int) (int, int, error) {
	for i := start; i < len(keys); i++ {
		switch err := m.Delete(&keys[i]); {
		case err == nil:
			n++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			return n, i, err
		}
	}
	return n, 0, nil
}
