package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/onehop-mesh/onehop/bpf"
)

// Conn is an established TCP connection of an enrolled network namespace, as sockops saw it.
type Conn struct {
	Cookie      uint64         // socket cookie
	Src, Dst    netip.AddrPort // Dst is the backend actually connected to
	VIP         netip.AddrPort // the service frontend connect() asked for; zero if not balanced
	Netns       uint64         // network namespace cookie
	Established time.Time
	// The TCP state since StateSince, and how many times it changed since Established (the
	// record and these keep going across agent restarts).
	State        TCPState
	StateSince   time.Time
	StateChanges uint32
}

// TCPState is a TCP state as the kernel numbers it (BPF_TCP_*); 0 is unknown: a connection
// whose record was migrated from pin layout 1, until its next state change.
type TCPState uint32

// TCP states used by name (BPF_TCP_*).
const (
	TCPEstablished TCPState = 1
	TCPClose       TCPState = 7
)

var tcpStates = [...]string{"unknown", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

func (s TCPState) String() string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// Conns lists the connections in oh_conns, with the VIP they were balanced from: recorded in
// the connection, or for a record migrated from an older layout, from oh_origdst.
func (d *Datapath) Conns() ([]Conn, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("read CLOCK_MONOTONIC: %w", err)
	}
	now, mono := time.Now(), uint64(ts.Nano())

	var (
		out    []Conn
		cookie uint64
		c      bpf.OnehopOhConn
		orig   bpf.OnehopOhEndpoint
	)
	it := d.objs.OhConns.Iterate()
	for it.Next(&cookie, &c) {
		conn := Conn{
			Cookie:       cookie,
			Src:          addrPort(c.Src),
			Dst:          addrPort(c.Dst),
			Netns:        c.Netns,
			Established:  now.Add(-time.Duration(mono - c.EstablishedNs)),
			State:        TCPState(c.State),
			StateSince:   now.Add(-time.Duration(mono - c.StateNs)),
			StateChanges: c.StateChanges,
		}
		if c.Orig != (bpf.OnehopOhEndpoint{}) {
			conn.VIP = addrPort(c.Orig) // recorded at established since layout 4
			out = append(out, conn)
			continue
		}
		switch err := d.objs.OhOrigdst.Lookup(cookie, &orig); { // a record of an older layout
		case err == nil:
			conn.VIP = addrPort(orig)
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			return nil, fmt.Errorf("look up socket %d in %s: %w", cookie, bpf.OnehopMapOhOrigdst, err)
		}
		out = append(out, conn)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list %s: %w", bpf.OnehopMapOhConns, err)
	}
	return out, nil
}
