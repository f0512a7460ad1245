package netns

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/netip"
	"path/filepath"
)

// Every object of lab NAME carries the prefix "onehop-NAME-" (namespaces) or lives under
// "onehop-NAME" (cgroups, bpffs, state). Lab names contain no '-', so one lab's prefix never
// matches another's.
func prefix(lab string) string { return "onehop-" + lab }

func underlayNetns(lab string) string   { return prefix(lab) + "-ul" }
func nodeNetns(lab, node string) string { return prefix(lab) + "-" + node }
func podNetns(lab, pod string) string   { return prefix(lab) + "-pod-" + pod }
func netnsPath(name string) string      { return filepath.Join("/run/netns", name) }
func podCgroup(root, lab, node, pod string) string {
	return filepath.Join(root, prefix(lab), node, "pod-"+pod)
}

// DaemonCgroup is the cgroup of a node component (kube-proxy, agent, node proxy).
func daemonCgroup(root, lab, node, name string) string {
	return filepath.Join(root, prefix(lab), node, "daemon-"+name)
}

// Interface names are limited to 15 bytes; they only need to be unique inside their namespace.
const (
	underlayBridge = "br0"
	nodeUplink     = "eth0"
	podBridge      = "cbr0"
	podIface       = "eth0"
)

// hostVeth names the node-side end of a pod's veth pair.
func hostVeth(pod string) string {
	sum := sha256.Sum256([]byte(pod))
	return "veth" + hex.EncodeToString(sum[:])[:8]
}

// bridgeMAC is fixed so the pods' gateway MAC never changes as ports come and go (a bridge
// otherwise takes the lowest MAC of its ports).
func bridgeMAC(nodeIndex int) string { return fmt.Sprintf("02:6f:68:00:%02x:01", nodeIndex) }

// subnet returns the index-th subnet of size bits inside p (10.244.0.0/16, 24, 1 -> 10.244.1.0/24).
func subnet(p netip.Prefix, bits, index int) netip.Prefix {
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	n.Add(n, new(big.Int).Lsh(big.NewInt(int64(index)), uint(len(b)*8-bits)))
	a, _ := netip.AddrFromSlice(n.FillBytes(make([]byte, len(b))))
	return netip.PrefixFrom(a, bits)
}

// host returns the n-th address of p (n=1 is the first usable address).
func host(p netip.Prefix, n int) netip.Addr {
	a := p.Addr()
	for i := 0; i < n; i++ {
		a = a.Next()
	}
	return a
}
