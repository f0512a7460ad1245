// Package kubeproxy programs ClusterIP services the way kube-proxy's iptables mode does: a
// services chain matching each VIP:port, one chain per service port that picks an endpoint with
// `statistic --mode random` probabilities, one chain per endpoint that DNATs to it, masquerade for
// hairpin traffic, and REJECT for services without ready endpoints. It is the lab's no-mesh
// baseline data plane and runs in each node's network namespace.
package kubeproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/onehop-mesh/onehop/clusters/services"
)

// Chain names. Every chain and rule the lab adds carries this prefix or the comment below, so it
// never touches rules it did not create.
const (
	chainServices    = "ONEHOP-SERVICES"
	chainPostrouting = "ONEHOP-POSTROUTING"
	chainMarkMasq    = "ONEHOP-MARK-MASQ"
	svcPrefix        = "ONEHOP-SVC-"
	sepPrefix        = "ONEHOP-SEP-"
	masqMark         = "0x4000/0x4000"
	jumpComment      = "onehop service portals"
)

// Family selects iptables (ipv4) or ip6tables (ipv6).
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

func (f Family) matches(a netip.Addr) bool { return a.Is4() == (f == IPv4) }

// Binary returns the iptables command of the family.
func (f Family) Binary() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

// Runner runs a command (in a node's network namespace) with stdin.
type Runner func(ctx context.Context, stdin []byte, argv ...string) ([]byte, error)

// Sync makes the node's rules for one family match snap: it writes our chains in one
// iptables-restore transaction (so a VIP is never half-programmed), deletes chains of services
// that are gone, and makes sure the hooks from the built-in chains exist.
func Sync(ctx context.Context, run Runner, f Family, snap services.Snapshot) error {
	existing, err := run(ctx, nil, f.Binary()+"-save", "-t", "nat")
	if err != nil {
		return fmt.Errorf("read %s nat table: %w", f.Binary(), err)
	}
	rules := Render(f, snap, staleChains(existing, f, snap))
	if _, err := run(ctx, rules, f.Binary()+"-restore", "-w", "--noflush"); err != nil {
		return fmt.Errorf("%s-restore: %w", f.Binary(), err)
	}
	// The service chains see only traffic to the service CIDR. kube-proxy hooks all traffic
	// because NodePorts and external IPs need it; the lab has neither, and this way traffic that
	// another data plane already sent to a pod (onehop rewrites at connect()) never walks the
	// baseline's rules: variants sharing a node share none of each other's per-connection work.
	var toServices []string
	for _, p := range snap.ServiceCIDRs {
		if f.matches(p.Addr()) {
			toServices = []string{"-d", p.String()}
		}
	}
	hooks := []struct {
		table, chain, target string
		match                []string
	}{
		{"nat", "PREROUTING", chainServices, toServices},
		{"nat", "OUTPUT", chainServices, toServices},
		{"nat", "POSTROUTING", chainPostrouting, nil},
		{"filter", "FORWARD", chainServices, toServices},
		{"filter", "OUTPUT", chainServices, toServices},
	}
	for _, h := range hooks {
		rule := append(append([]string{h.chain}, h.match...), "-m", "comment", "--comment", jumpComment, "-j", h.target)
		if _, err := run(ctx, nil, append([]string{f.Binary(), "-w", "-t", h.table, "-C"}, rule...)...); err == nil {
			continue
		}
		if _, err := run(ctx, nil, append([]string{f.Binary(), "-w", "-t", h.table, "-I"}, rule...)...); err != nil {
			return fmt.Errorf("hook %s %s -> %s: %w", h.table, h.chain, h.target, err)
		}
		if len(h.match) > 0 { // replace an unscoped hook left by an older onehop
			unscoped := []string{h.chain, "-m", "comment", "--comment", jumpComment, "-j", h.target}
			run(ctx, nil, append([]string{f.Binary(), "-w", "-t", h.table, "-D"}, unscoped...)...)
		}
	}
	return nil
}

// Render returns iptables-restore input for our chains. Chains named in stale are flushed and
// deleted in the same transaction.
func Render(f Family, snap services.Snapshot, stale []string) []byte {
	var nat, natChains, filter bytes.Buffer
	declare := func(chain string) { fmt.Fprintf(&natChains, ":%s - [0:0]\n", chain) }
	for _, c := range []string{chainServices, chainPostrouting, chainMarkMasq} {
		declare(c)
	}
	fmt.Fprintf(&nat, "-A %s -m mark ! --mark %s -j RETURN\n", chainPostrouting, masqMark)
	fmt.Fprintf(&nat, "-A %s -j MARK --xor-mark 0x4000\n", chainPostrouting)
	fmt.Fprintf(&nat, "-A %s -j MASQUERADE\n", chainPostrouting)
	fmt.Fprintf(&nat, "-A %s -j MARK --or-mark 0x4000\n", chainMarkMasq)

	for _, svc := range snap.Services {
		for _, vip := range svc.ClusterIPs {
			if !f.matches(vip) {
				continue
			}
			for _, port := range svc.Ports {
				proto := strings.ToLower(string(port.Protocol))
				name := fmt.Sprintf("%s:%s", svc.Key(), port.Name)
				match := fmt.Sprintf("-d %s -p %s -m %s --dport %d", hostCIDR(vip), proto, proto, port.Port)
				eps := readyAddrs(f, svc.Endpoints)
				if len(eps) == 0 {
					// Like kube-proxy: reject at once rather than let clients time out.
					fmt.Fprintf(&filter, "-A %s %s -m comment --comment %q -j REJECT\n", chainServices, match, name+" has no endpoints")
					continue
				}
				svcChain := svcPrefix + hash(fmt.Sprintf("%s/%s/%d", name, proto, port.Port))
				declare(svcChain)
				fmt.Fprintf(&nat, "-A %s %s -m comment --comment %q -j %s\n", chainServices, match, name+" cluster IP", svcChain)
				for i, ep := range eps {
					sep := sepPrefix + hash(fmt.Sprintf("%s/%s/%d/%s", name, proto, port.Port, ep))
					declare(sep)
					// Each rule takes 1/(remaining) of what reaches it: a uniform pick overall.
					if n := len(eps) - i; n > 1 {
						fmt.Fprintf(&nat, "-A %s -m comment --comment %q -m statistic --mode random --probability %.11f -j %s\n", svcChain, name, 1/float64(n), sep)
					} else {
						fmt.Fprintf(&nat, "-A %s -m comment --comment %q -j %s\n", svcChain, name, sep)
					}
					fmt.Fprintf(&nat, "-A %s -s %s -m comment --comment %q -j %s\n", sep, hostCIDR(ep), name, chainMarkMasq)
					fmt.Fprintf(&nat, "-A %s -p %s -m comment --comment %q -m %s -j DNAT --to-destination %s\n", sep, proto, name, proto, netip.AddrPortFrom(ep, port.TargetPort))
				}
			}
		}
	}
	var out bytes.Buffer
	out.WriteString("*nat\n")
	out.Write(natChains.Bytes())
	for _, c := range stale {
		fmt.Fprintf(&out, ":%s - [0:0]\n", c)
	}
	out.Write(nat.Bytes())
	for _, c := range stale {
		fmt.Fprintf(&out, "-X %s\n", c)
	}
	out.WriteString("COMMIT\n*filter\n")
	fmt.Fprintf(&out, ":%s - [0:0]\n", chainServices)
	out.Write(filter.Bytes())
	out.WriteString("COMMIT\n")
	return out.Bytes()
}

// staleChains returns our per-service and per-endpoint chains present in save output that snap
// no longer needs.
func staleChains(save []byte, f Family, snap services.Snapshot) []string {
	want := map[string]bool{}
	for _, line := range strings.Split(string(Render(f, snap, nil)), "\n") {
		if strings.HasPrefix(line, ":") {
			want[strings.Fields(line[1:])[0]] = true
		}
	}
	var stale []string
	for _, line := range strings.Split(string(save), "\n") {
		if !strings.HasPrefix(line, ":"+svcPrefix) && !strings.HasPrefix(line, ":"+sepPrefix) {
			continue
		}
		if c := strings.Fields(line[1:])[0]; !want[c] {
			stale = append(stale, c)
		}
	}
	sort.Strings(stale)
	return stale
}

func readyAddrs(f Family, eps []services.Endpoint) []netip.Addr {
	var out []netip.Addr
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		for _, ip := range ep.IPs {
			if f.matches(ip) {
				out = append(out, ip)
			}
		}
	}
	return out
}

func hostCIDR(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// hash names a chain as kube-proxy does: base32 of a SHA-256, 16 characters.
func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

// VIPPackets sums the packets the services chain matched for a VIP on one node: one per new
// connection to it, since NAT rules see only a connection's first packet. A sync that rewrites
// the chain resets the counters.
func VIPPackets(ctx context.Context, run Runner, f Family, vip string) (int64, error) {
	out, err := run(ctx, nil, f.Binary(), "-w", "-t", "nat", "-L", chainServices, "-v", "-x", "-n")
	if err != nil {
		return 0, err
	}
	var total int64
	for _, line := range strings.Split(string(out), "\n") {
		// pkts bytes target prot opt in out source destination ...
		if fs := strings.Fields(line); len(fs) > 8 && fs[8] == vip {
			n, _ := strconv.ParseInt(fs[0], 10, 64)
			total += n
		}
	}
	return total, nil
}
