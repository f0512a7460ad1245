package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/onehop-mesh/onehop/bpf"
)

// Enrollment owns oh_enrolled: the network namespaces, by cookie, whose TCP connects are
// balanced and whose connections are tracked. Changes apply to the next connect; nothing is
// re-attached.
type Enrollment struct {
	m       *ebpf.Map
	metrics *Metrics
}

// Enroll adds a network namespace (its SO_NETNS_COOKIE / bpf_get_netns_cookie value).
func (e *Enrollment) Enroll(cookie uint64) error {
	err := e.m.Update(cookie, uint8(1), ebpf.UpdateAny)
	e.metrics.mapOp(bpf.OnehopMapOhEnrolled, "update", 1, err)
	if err != nil {
		return fmt.Errorf("enroll netns %d in %s: %w (raise Options.MaxNetns if it is full)", cookie, bpf.OnehopMapOhEnrolled, err)
	}
	return nil
}

// Unenroll removes a network namespace; it is not an error if it was not enrolled.
func (e *Enrollment) Unenroll(cookie uint64) error {
	err := e.m.Delete(cookie)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	e.metrics.mapOp(bpf.OnehopMapOhEnrolled, "delete", 1, err)
	if err != nil {
		return fmt.Errorf("unenroll netns %d from %s: %w", cookie, bpf.OnehopMapOhEnrolled, err)
	}
	return nil
}

// Enrolled lists the enrolled network namespace cookies.
func (e *Enrollment) Enrolled() ([]uint64, error) {
	var (
		out    []uint64
		cookie uint64
		v      uint8
	)
	it := e.m.Iterate()
	for it.Next(&cookie, &v) {
		out = append(out, cookie)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", bpf.OnehopMapOhEnrolled, err)
	}
	return out, nil
}
