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
}

// Conns lists the connections in oh_conns, with the VIP from oh_origdst when there is one.
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
			Cookie:      cookie,
			Src:         addrPort(c.Src),
			Dst:         addrPort(c.Dst),
			Netns:       c.Netns,
			Established: now.Add(-time.Duration(mono - c.EstablishedNs)),
		}
		switch err := d.objs.OhOrigdst.Lookup(cookie, &orig); {
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
