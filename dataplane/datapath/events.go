package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/bpf"
)

// EventType is what a telemetry event reports (enum oh_event_type).
type EventType uint8

const (
	EventOpen          = EventType(bpf.OnehopOhEventTypeOH_EV_OPEN)
	EventReport        = EventType(bpf.OnehopOhEventTypeOH_EV_REPORT)
	EventClose         = EventType(bpf.OnehopOhEventTypeOH_EV_CLOSE)
	EventConnectFailed = EventType(bpf.OnehopOhEventTypeOH_EV_CONNECT_FAILED)
)

func (t EventType) String() string {
	switch t {
	case EventOpen:
		return "open"
	case EventReport:
		return "report"
	case EventClose:
		return "close"
	case EventConnectFailed:
		return "connect_failed"
	}
	return fmt.Sprintf("event(%d)", uint8(t))
}

// Direction is which side of a connection the socket is (enum oh_direction).
type Direction uint8

const (
	DirectionUnknown  = Direction(bpf.OnehopOhDirectionOH_DIR_UNKNOWN)
	DirectionOutbound = Direction(bpf.OnehopOhDirectionOH_DIR_OUTBOUND) // it connected: the client side
	DirectionInbound  = Direction(bpf.OnehopOhDirectionOH_DIR_INBOUND)  // it was accepted: the server side
)

func (d Direction) String() string {
	switch d {
	case DirectionOutbound:
		return "outbound"
	case DirectionInbound:
		return "inbound"
	}
	return "unknown"
}

// TCPStats are a connection's counters (struct oh_tcp_stats): payload bytes each way (sent
// counts a retransmitted byte once; received leaves out the peer's FIN), segments, segments
// retransmitted and packets marked lost.
type TCPStats struct {
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
	SegsIn        uint32 `json:"segs_in"`
	SegsOut       uint32 `json:"segs_out"`
	Retrans       uint32 `json:"retransmits"`
	Lost          uint32 `json:"lost"`
}

// Event is one telemetry event of oh_events, decoded.
type Event struct {
	Type      EventType
	Direction Direction
	// First: no earlier event of this connection arrived (the open event, or the first one
	// after an open event was lost): the connection is counted as opened with it.
	First bool
	// NoEndpoints: a connect failed because onehop refused it (the service has no endpoints).
	NoEndpoints bool
	State       TCPState
	Err         syscall.Errno // a failed connect's error (ECONNREFUSED, ETIMEDOUT, ...)
	Cookie      uint64        // socket cookie
	Netns       uint64        // network namespace cookie
	Time        time.Time
	Established time.Time      // zero for a failed connect
	Src, Dst    netip.AddrPort // local and peer address; Src is zero for a connect onehop refused
	VIP         netip.AddrPort // the service frontend connect() asked for; zero if not balanced
	SRTT        time.Duration  // smoothed RTT
	MinRTT      time.Duration
	Total       TCPStats // since established
	Delta       TCPStats // since the connection's previous event that arrived
}

// Age is how long the connection had been established at the event.
func (e *Event) Age() time.Duration {
	if e.Established.IsZero() {
		return 0
	}
	return e.Time.Sub(e.Established)
}

// EventReader reads telemetry events from oh_events. oh_events is pinned with the other maps:
// events the kernel sends while no agent runs wait there for the next one (up to its size), and
// each event is read by one agent only.
//
// The kernel wakes the reader only when a quarter of oh_events is full (a wakeup per event would
// cost a context switch per connection); otherwise Read looks every PollInterval, so an event
// is read at most that late.
type EventReader struct {
	rd       *ringbuf.Reader
	offset   time.Duration // wall clock minus CLOCK_MONOTONIC
	rec      ringbuf.Record
	deadline time.Time
}

// PollInterval is how often a waiting Read looks for events the kernel sent without a wakeup.
const PollInterval = 100 * time.Millisecond

// Events opens a reader of oh_events. Only one should read at a time.
func (d *Datapath) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(d.objs.OhEvents)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.OnehopMapOhEvents, err)
	}
	r := &EventReader{rd: rd}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		rd.Close()
		return nil, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	r.offset = time.Duration(time.Now().UnixNano() - ts.Nano())
	return r, nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = os.ErrClosed

// Read blocks until an event arrives (or the reader is closed: ErrClosed). A deadline set
// with SetDeadline makes it return os.ErrDeadlineExceeded.
func (r *EventReader) Read() (Event, error) {
	for {
		poll := time.Now().Add(PollInterval)
		if !r.deadline.IsZero() && r.deadline.Before(poll) {
			poll = r.deadline
		}
		r.rd.SetDeadline(poll)
		err := r.rd.ReadInto(&r.rec)
		if err == nil {
			break
		}
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, ErrClosed
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return Event{}, err
		}
		if !r.deadline.IsZero() && !time.Now().Before(r.deadline) {
			return Event{}, err
		}
	}
	var raw bpf.OnehopOhEvent
	if len(r.rec.RawSample) < int(unsafe.Sizeof(raw)) {
		return Event{}, fmt.Errorf("%s: a record of %d bytes, want %d", bpf.OnehopMapOhEvents, len(r.rec.RawSample), unsafe.Sizeof(raw))
	}
	raw = *(*bpf.OnehopOhEvent)(unsafe.Pointer(&r.rec.RawSample[0]))
	return r.decode(&raw), nil
}

// SetDeadline makes Read return os.ErrDeadlineExceeded at t when no event arrived; the zero
// time: no deadline.
func (r *EventReader) SetDeadline(t time.Time) { r.deadline = t }

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *EventReader) Close() error { return r.rd.Close() }

func (r *EventReader) wall(mono uint64) time.Time {
	if mono == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(mono)).Add(r.offset)
}

func (r *EventReader) decode(e *bpf.OnehopOhEvent) Event {
	return Event{
		Type:        EventType(e.Type),
		Direction:   Direction(e.Direction),
		First:       e.Flags&uint8(bpf.OnehopOhEventFlagOH_EV_FIRST) != 0,
		NoEndpoints: e.Flags&uint8(bpf.OnehopOhEventFlagOH_EV_NO_ENDPOINTS) != 0,
		State:       TCPState(e.State),
		Err:         syscall.Errno(e.Err),
		Cookie:      e.Cookie,
		Netns:       e.Netns,
		Time:        r.wall(e.TimeNs),
		Established: r.wall(e.EstablishedNs),
		Src:         optAddrPort(bpf.OnehopOhEndpoint(e.Src)),
		Dst:         optAddrPort(bpf.OnehopOhEndpoint(e.Dst)),
		VIP:         optAddrPort(bpf.OnehopOhEndpoint(e.Orig)),
		SRTT:        time.Duration(e.SrttUs) * time.Microsecond,
		MinRTT:      time.Duration(e.MinRttUs) * time.Microsecond,
		Total:       TCPStats{e.Total.BytesSent, e.Total.BytesReceived, e.Total.SegsIn, e.Total.SegsOut, e.Total.Retrans, e.Total.Lost},
		Delta:       TCPStats{e.Delta.BytesSent, e.Delta.BytesReceived, e.Delta.SegsIn, e.Delta.SegsOut, e.Delta.Retrans, e.Delta.Lost},
	}
}

// optAddrPort decodes an endpoint that may be unset (all zero) into the zero AddrPort.
func optAddrPort(e bpf.OnehopOhEndpoint) netip.AddrPort {
	if e == (bpf.OnehopOhEndpoint{}) {
		return netip.AddrPort{}
	}
	return addrPort(e)
}
