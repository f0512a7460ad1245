package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/onehop-mesh/onehop/bpf"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

// netPort converts a port between host order and the network order the kernel keeps in
// sockets (and so in the maps), both read as native uint16s. It is its own inverse.
func netPort(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func endpoint(ap netip.AddrPort) bpf.OnehopOhEndpoint {
	return bpf.OnehopOhEndpoint{Addr: ap.Addr().As16(), Port: netPort(ap.Port())}
}

// addrPort decodes an endpoint; v4-mapped addresses come back as IPv4.
func addrPort(e bpf.OnehopOhEndpoint) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(e.Addr).Unmap(), netPort(e.Port))
}

func svcKey(k model.Key) bpf.OnehopOhSvcKey {
	return bpf.OnehopOhSvcKey{Addr: k.VIP.As16(), Port: netPort(k.Port), Proto: uint8(k.Proto)}
}

func modelKey(k bpf.OnehopOhSvcKey) model.Key {
	return model.Key{VIP: netip.AddrFrom16(k.Addr).Unmap(), Port: netPort(k.Port), Proto: model.Protocol(k.Proto)}
}

// kernelPolicy maps a model policy to enum oh_policy; ok is false for one the kernel lacks.
func kernelPolicy(p model.Policy) (v uint8, ok bool) {
	switch p {
	case model.Random:
		return uint8(bpf.OnehopOhPolicyOH_POLICY_RANDOM), true
	case model.RoundRobin:
		return uint8(bpf.OnehopOhPolicyOH_POLICY_ROUND_ROBIN), true
	}
	return 0, false
}

func modelPolicy(v uint8) (model.Policy, bool) {
	switch bpf.OnehopOhPolicy(v) {
	case bpf.OnehopOhPolicyOH_POLICY_RANDOM:
		return model.Random, true
	case bpf.OnehopOhPolicyOH_POLICY_ROUND_ROBIN:
		return model.RoundRobin, true
	}
	return 0, false
}
