// Package model is the agent's plain-Go view of what the kernel must do: which service VIPs it
// load-balances, over which endpoints, with which policy. The xDS translator produces it; the
// BPF map programmer consumes it. It has no xDS or BPF types, so both sides test on their own.
package model

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
)

// Protocol is an IP protocol number.
type Protocol uint8

const (
	TCP Protocol = 6
	UDP Protocol = 17
)

// Policy is how the kernel picks a slot for a new connection.
type Policy uint8

const (
	// Random picks a slot uniformly at random.
	Random Policy = iota
	// RoundRobin cycles through the slots with a per-service counter.
	RoundRobin
)

func (p Policy) String() string {
	switch p {
	case Random:
		return "random"
	case RoundRobin:
		return "round-robin"
	}
	return fmt.Sprintf("policy(%d)", uint8(p))
}

// Limits bound what one service may hold in the kernel maps.
const (
	MaxPriorities = 4    // locality priority levels (0 = preferred)
	MaxSlots      = 1024 // slots per priority level of one service
	MaxWeight     = 1 << 20
)

// Key identifies a service frontend: VIP, port, protocol.
type Key struct {
	VIP   netip.Addr
	Port  uint16
	Proto Protocol
}

func (k Key) String() string {
	return fmt.Sprintf("%s/%d", netip.AddrPortFrom(k.VIP, k.Port), k.Proto)
}

// Endpoint is one backend address with its weight (relative within its service and priority).
type Endpoint struct {
	Addr   netip.AddrPort
	Weight uint32
}

// Service is one frontend and what it balances over. Priorities[0] is used while it has
// endpoints; the next level only when every level before it is empty. Only healthy endpoints
// belong here: health is applied when the model is built. A service with no endpoints at all
// refuses connections (ECONNREFUSED at connect()).
type Service struct {
	Key        Key
	Name       string // for logs and metrics, e.g. the xDS cluster or listener name
	Policy     Policy
	Priorities [][]Endpoint
}

// Config is the whole desired state: every service the agent programs.
type Config struct {
	Services map[Key]Service
}

// Validate checks the limits the kernel maps impose.
func (s Service) Validate() error {
	if !s.Key.VIP.IsValid() || s.Key.Port == 0 {
		return fmt.Errorf("service %s: no VIP or port", s.Name)
	}
	if len(s.Priorities) > MaxPriorities {
		return fmt.Errorf("service %s (%s): %d priority levels, at most %d are supported", s.Name, s.Key, len(s.Priorities), MaxPriorities)
	}
	for p, eps := range s.Priorities {
		for _, e := range eps {
			if e.Weight == 0 || e.Weight > MaxWeight {
				return fmt.Errorf("service %s (%s): endpoint %s has weight %d (must be 1..%d)", s.Name, s.Key, e.Addr, e.Weight, MaxWeight)
			}
			if e.Addr.Addr().Is4() != s.Key.VIP.Is4() {
				return fmt.Errorf("service %s (%s): endpoint %s is not of the VIP's address family", s.Name, s.Key, e.Addr)
			}
		}
		if len(eps) > MaxSlots {
			return fmt.Errorf("service %s (%s): priority %d has %d endpoints, at most %d are supported", s.Name, s.Key, p, len(eps), MaxSlots)
		}
	}
	// No endpoints is valid: the kernel refuses connect()s to the VIP (a service scaled to
	// zero), rather than leaving them to whatever the VIP would reach without onehop.
	return nil
}

// Slots expands one priority level into the slot table the kernel picks from: each endpoint
// appears in proportion to its weight (equal weights give one slot each), so a uniform pick over
// slots is a weighted pick over endpoints. Weights are scaled to fit MaxSlots with
// largest-remainder rounding; every endpoint keeps at least one slot.
func Slots(eps []Endpoint) []netip.AddrPort {
	if len(eps) == 0 {
		return nil
	}
	g := uint64(0)
	var sum uint64
	for _, e := range eps {
		g = gcd(g, uint64(e.Weight))
		sum += uint64(e.Weight)
	}
	n := sum / g // slots if weights are used exactly (after dividing by their gcd)
	if n <= MaxSlots {
		out := make([]netip.AddrPort, 0, n)
		for _, e := range eps {
			for i := uint64(0); i < uint64(e.Weight)/g; i++ {
				out = append(out, e.Addr)
			}
		}
		return out
	}
	// Scale to MaxSlots: floor shares, then hand out the remaining slots by largest remainder.
	type share struct {
		i    int
		n    uint64
		frac uint64
	}
	shares := make([]share, len(eps))
	used := uint64(0)
	for i, e := range eps {
		exact := uint64(e.Weight) * MaxSlots
		shares[i] = share{i, max(exact/sum, 1), exact % sum}
		used += shares[i].n
	}
	order := slices.Clone(shares)
	sort.SliceStable(order, func(a, b int) bool { return order[a].frac > order[b].frac })
	for j := 0; used < MaxSlots && j < len(order); j++ {
		shares[order[j].i].n++
		used++
	}
	out := make([]netip.AddrPort, 0, used)
	for i, e := range eps {
		for k := uint64(0); k < shares[i].n; k++ {
			out = append(out, e.Addr)
		}
	}
	return out
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
