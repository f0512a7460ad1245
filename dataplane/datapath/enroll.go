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

// NetnsOptions is what onehop does for an enrolled network namespace besides balancing its
// connects and tracking its connections.
type NetnsOptions struct {
	Telemetry bool `json:"telemetry"`  // report its connections: metrics, and the access log if on
	AccessLog bool `json:"access_log"` // an access log line per connection event (with Telemetry)
	// Sockmap accelerates its same-node connections (peers on loopback or at an address given
	// to Datapath.SetLocal): payloads go from socket to socket, skipping TCP/IP.
	Sockmap bool `json:"sockmap,omitempty"`
	// Sidecar says a sidecar proxy in the pod intercepts its connections: its connects are not
	// balanced (the proxy does that), and with Sockmap every connection it opens is a same-node
	// hop (to its proxy, or from the proxy to a peer).
	Sidecar bool `json:"sidecar,omitempty"`
}

func (o NetnsOptions) flags() uint8 {
	f := uint8(bpf.OnehopOhNetnsFlagOH_NETNS_BALANCE)
	if o.Sidecar {
		f = uint8(bpf.OnehopOhNetnsFlagOH_NETNS_SIDECAR)
	}
	if o.Sockmap {
		f |= uint8(bpf.OnehopOhNetnsFlagOH_NETNS_SOCKMAP)
	}
	if o.Telemetry {
		f |= uint8(bpf.OnehopOhNetnsFlagOH_NETNS_TELEMETRY)
	}
	if o.AccessLog {
		f |= uint8(bpf.OnehopOhNetnsFlagOH_NETNS_ACCESS_LOG)
	}
	return f
}

func optionsOf(f uint8) NetnsOptions {
	return NetnsOptions{
		Telemetry: f&uint8(bpf.OnehopOhNetnsFlagOH_NETNS_TELEMETRY) != 0,
		AccessLog: f&uint8(bpf.OnehopOhNetnsFlagOH_NETNS_ACCESS_LOG) != 0,
		Sockmap:   f&uint8(bpf.OnehopOhNetnsFlagOH_NETNS_SOCKMAP) != 0,
		Sidecar:   f&uint8(bpf.OnehopOhNetnsFlagOH_NETNS_SIDECAR) != 0,
	}
}

// Enroll adds a network namespace (its SO_NETNS_COOKIE / bpf_get_netns_cookie value), or
// changes its options: connections established from then on follow them.
func (e *Enrollment) Enroll(cookie uint64, o NetnsOptions) error {
	err := e.m.Update(cookie, o.flags(), ebpf.UpdateAny)
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

// Options returns the options a network namespace is enrolled with; ok is false if it is not.
func (e *Enrollment) Options(cookie uint64) (o NetnsOptions, ok bool, err error) {
	var f uint8
	switch err := e.m.Lookup(cookie, &f); {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return o, false, nil
	case err != nil:
		return o, false, fmt.Errorf("look up netns %d in %s: %w", cookie, bpf.OnehopMapOhEnrolled, err)
	}
	return optionsOf(f), true, nil
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
