package kubeproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/onehop-mesh/onehop/clusters/services"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func ep(pod string, ready bool, ips ...string) services.Endpoint {
	return services.Endpoint{Pod: pod, Node: "n1", IPs: addrs(ips...), Ready: ready}
}

func view(ns, name string, vips []string, eps ...services.Endpoint) services.ServiceView {
	return services.ServiceView{
		Service: services.Service{Namespace: ns, Name: name, ClusterIPs: addrs(vips...), Selector: map[string]string{"app": name},
			Ports: []services.Port{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}}},
		Endpoints: eps,
	}
}

// restore is iptables-restore input split into tables.
type restore struct {
	chains map[string][]string // table -> declared chains, in order
	rules  map[string][]string // table -> "-A"/"-X" lines, in order
}

// parseRestore checks the overall shape (*table ... COMMIT, declarations before rules) and
// splits the input into tables.
func parseRestore(t *testing.T, b []byte) restore {
	t.Helper()
	r := restore{chains: map[string][]string{}, rules: map[string][]string{}}
	table := ""
	var order []string
	for i, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			if table != "" {
				t.Fatalf("line %d: table %s starts before %s is committed", i+1, line, table)
			}
			table = line[1:]
			order = append(order, table)
		case line == "COMMIT":
			if table == "" {
				t.Fatalf("line %d: COMMIT outside a table", i+1)
			}
			table = ""
		case table == "":
			t.Fatalf("line %d: %q outside a table", i+1, line)
		case strings.HasPrefix(line, ":"):
			if len(r.rules[table]) > 0 && strings.HasPrefix(r.rules[table][0], "-A") {
				// Declarations may follow rules only for stale chains, which are then deleted;
				// Render puts every declaration first.
				t.Errorf("line %d: chain declared after rules: %q", i+1, line)
			}
			f := strings.Fields(line[1:])
			if len(f) != 3 || f[1] != "-" || f[2] != "[0:0]" {
				t.Errorf("line %d: malformed chain declaration %q", i+1, line)
			}
			r.chains[table] = append(r.chains[table], f[0])
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "-X "):
			r.rules[table] = append(r.rules[table], line)
		default:
			t.Fatalf("line %d: unexpected %q", i+1, line)
		}
	}
	if table != "" {
		t.Fatalf("table %s not committed", table)
	}
	if !slices.Equal(order, []string{"nat", "filter"}) {
		t.Fatalf("tables = %v, want [nat filter]", order)
	}
	return r
}

// chainRules returns the rules appended to chain in table, without the "-A chain " prefix.
func (r restore) chainRules(table, chain string) []string {
	var out []string
	for _, l := range r.rules[table] {
		if rest, ok := strings.CutPrefix(l, "-A "+chain+" "); ok {
			out = append(out, rest)
		}
	}
	return out
}

var jumpRE = regexp.MustCompile(`-j (\S+)`)

func target(rule string) string {
	m := jumpRE.FindStringSubmatch(rule)
	if m == nil {
		return ""
	}
	return m[1]
}

// svcChainOf returns the service chain the ONEHOP-SERVICES rule for vip:port jumps to.
func svcChainOf(t *testing.T, r restore, vip string, port int) string {
	t.Helper()
	var found []string
	for _, rule := range r.chainRules("nat", chainServices) {
		if strings.Contains(rule, "-d "+vip+" ") && strings.Contains(rule, fmt.Sprintf("--dport %d ", port)) {
			found = append(found, target(rule))
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s rule for %s:%d, got %v", chainServices, vip, port, found)
	}
	return found[0]
}

var probRE = regexp.MustCompile(`-m statistic --mode random --probability (\S+) `)

func TestRenderThreeEndpointsUniform(t *testing.T) {
	snap := services.Snapshot{Version: 7, Services: []services.ServiceView{
		view("bench", "web", []string{"10.96.0.1"},
			ep("web-a", true, "10.244.1.2"),
			ep("web-b", true, "10.244.2.2"),
			ep("web-c", false, "10.244.1.9"), // not ready: never a backend
			ep("web-d", true, "10.244.3.2", "fd00:10:244:3::2"),
		),
	}}
	out := Render(IPv4, snap, nil)
	r := parseRestore(t, out)
	if bytes.Contains(out, []byte("10.244.1.9")) {
		t.Errorf("the not-ready endpoint 10.244.1.9 appears in the rules:\n%s", out)
	}
	if bytes.Contains(out, []byte("fd00:")) {
		t.Errorf("IPv6 addresses in IPv4 rules:\n%s", out)
	}

	svcRules := r.chainRules("nat", chainServices)
	wantSvcRule := `-d 10.96.0.1/32 -p tcp -m tcp --dport 80 -m comment --comment "bench/web:http cluster IP" -j `
	if len(svcRules) != 1 || !strings.HasPrefix(svcRules[0], wantSvcRule) {
		t.Fatalf("%s rules = %q, want one starting %q", chainServices, svcRules, wantSvcRule)
	}
	svcChain := target(svcRules[0])
	if !strings.HasPrefix(svcChain, svcPrefix) {
		t.Fatalf("service rule jumps to %q, want a %s chain", svcChain, svcPrefix)
	}

	rules := r.chainRules("nat", svcChain)
	if len(rules) != 3 {
		t.Fatalf("service chain has %d rules, want 3 (one per ready endpoint):\n%s", len(rules), strings.Join(rules, "\n"))
	}
	wantProb := []float64{1.0 / 3, 1.0 / 2, 1} // 1 = unconditional
	reach, total := 1.0, 0.0
	seps := map[string]bool{}
	for i, rule := range rules {
		p := 1.0
		if m := probRE.FindStringSubmatch(rule); m != nil {
			v, err := strconv.ParseFloat(m[1], 64)
			if err != nil {
				t.Fatalf("rule %d: bad probability %q", i, m[1])
			}
			p = v
		} else if strings.Contains(rule, "statistic") {
			t.Fatalf("rule %d: unparsed statistic match: %q", i, rule)
		}
		if math.Abs(p-wantProb[i]) > 1e-9 {
			t.Errorf("rule %d probability %v, want %v: %q", i, p, wantProb[i], rule)
		}
		// Each endpoint is picked with probability 1/3 overall.
		if pick := reach * p; math.Abs(pick-1.0/3) > 1e-9 {
			t.Errorf("endpoint %d is picked with probability %v, want 1/3", i, pick)
		}
		total += reach * p
		reach *= 1 - p
		sep := target(rule)
		if !strings.HasPrefix(sep, sepPrefix) || seps[sep] {
			t.Errorf("rule %d jumps to %q, want a new %s chain", i, sep, sepPrefix)
		}
		seps[sep] = true
		if !strings.Contains(rule, `--comment "bench/web:http"`) {
			t.Errorf("rule %d lacks the service comment: %q", i, rule)
		}
	}
	if math.Abs(total-1) > 1e-9 || reach > 1e-9 {
		t.Errorf("picks sum to %v with %v falling through, want 1 and 0", total, reach)
	}
	if probRE.MatchString(rules[2]) {
		t.Errorf("the last rule must be unconditional: %q", rules[2])
	}

	// Each endpoint chain marks hairpin traffic for masquerade and DNATs to the target port.
	gotDNAT := []string{}
	for i, rule := range rules {
		sep := target(rule)
		sr := r.chainRules("nat", sep)
		if len(sr) != 2 {
			t.Fatalf("endpoint chain %s has rules %q, want 2", sep, sr)
		}
		ip := []string{"10.244.1.2", "10.244.2.2", "10.244.3.2"}[i]
		if want := fmt.Sprintf(`-s %s/32 -m comment --comment "bench/web:http" -j %s`, ip, chainMarkMasq); sr[0] != want {
			t.Errorf("endpoint chain %s first rule %q, want %q", sep, sr[0], want)
		}
		m := regexp.MustCompile(`^-p tcp -m comment --comment "bench/web:http" -m tcp -j DNAT --to-destination (\S+)$`).FindStringSubmatch(sr[1])
		if m == nil {
			t.Errorf("endpoint chain %s DNAT rule %q", sep, sr[1])
			continue
		}
		gotDNAT = append(gotDNAT, m[1])
	}
	if want := []string{"10.244.1.2:8080", "10.244.2.2:8080", "10.244.3.2:8080"}; !slices.Equal(gotDNAT, want) {
		t.Errorf("DNAT destinations %v, want %v (endpoints in snapshot order)", gotDNAT, want)
	}

	// Every chain jumped to is ours and declared in the same table; the filter table has no rules.
	declared := map[string]bool{}
	for _, c := range r.chains["nat"] {
		if declared[c] {
			t.Errorf("chain %s declared twice", c)
		}
		declared[c] = true
	}
	for _, rule := range r.rules["nat"] {
		if tg := target(rule); strings.HasPrefix(tg, "ONEHOP-") && !declared[tg] {
			t.Errorf("rule jumps to undeclared chain %s: %q", tg, rule)
		}
	}
	if want := 3 + 1 + 3; len(r.chains["nat"]) != want {
		t.Errorf("nat declares %d chains, want %d (3 fixed, 1 service, 3 endpoints): %v", len(r.chains["nat"]), want, r.chains["nat"])
	}
	if len(r.rules["filter"]) != 0 || !slices.Equal(r.chains["filter"], []string{chainServices}) {
		t.Errorf("filter = chains %v rules %q, want only an empty %s", r.chains["filter"], r.rules["filter"], chainServices)
	}
	// The masquerade plumbing.
	if got := r.chainRules("nat", chainPostrouting); !slices.Equal(got, []string{
		"-m mark ! --mark " + masqMark + " -j RETURN", "-j MARK --xor-mark 0x4000", "-j MASQUERADE"}) {
		t.Errorf("%s rules = %q", chainPostrouting, got)
	}
	if got := r.chainRules("nat", chainMarkMasq); !slices.Equal(got, []string{"-j MARK --or-mark 0x4000"}) {
		t.Errorf("%s rules = %q", chainMarkMasq, got)
	}
}

func TestRenderProbabilities(t *testing.T) {
	for n := 1; n <= 5; n++ {
		var eps []services.Endpoint
		for i := range n {
			eps = append(eps, ep(fmt.Sprint("p", i), true, fmt.Sprintf("10.244.1.%d", i+2)))
		}
		r := parseRestore(t, Render(IPv4, services.Snapshot{Services: []services.ServiceView{view("default", "s", []string{"10.96.0.9"}, eps...)}}, nil))
		rules := r.chainRules("nat", svcChainOf(t, r, "10.96.0.9/32", 80))
		if len(rules) != n {
			t.Fatalf("%d endpoints: %d rules", n, len(rules))
		}
		for i, rule := range rules {
			m := probRE.FindStringSubmatch(rule)
			if i == n-1 {
				if m != nil {
					t.Errorf("%d endpoints: last rule has a probability: %q", n, rule)
				}
				continue
			}
			if m == nil {
				t.Fatalf("%d endpoints: rule %d has no probability: %q", n, i, rule)
			}
			if p, _ := strconv.ParseFloat(m[1], 64); math.Abs(p-1/float64(n-i)) > 1e-9 {
				t.Errorf("%d endpoints: rule %d probability %v, want 1/%d", n, i, p, n-i)
			}
		}
	}
}

func TestRenderNoReadyEndpoints(t *testing.T) {
	tests := []struct {
		name string
		eps  []services.Endpoint
	}{
		{"no endpoints", nil},
		{"only not-ready endpoints", []services.Endpoint{ep("a", false, "10.244.1.2"), ep("b", false, "10.244.2.2")}},
		{"ready endpoints of the other family only", []services.Endpoint{ep("a", true, "fd00:10:244:1::2")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := services.Snapshot{Services: []services.ServiceView{
				view("default", "empty", []string{"10.96.0.2"}, tt.eps...),
				view("default", "web", []string{"10.96.0.1"}, ep("w", true, "10.244.1.5")),
			}}
			out := Render(IPv4, snap, nil)
			r := parseRestore(t, out)
			want := `-A ONEHOP-SERVICES -d 10.96.0.2/32 -p tcp -m tcp --dport 80 -m comment --comment "default/empty:http has no endpoints" -j REJECT`
			if !slices.Equal(r.rules["filter"], []string{want}) {
				t.Errorf("filter rules = %q, want [%q]", r.rules["filter"], want)
			}
			for _, rule := range r.rules["nat"] {
				if strings.Contains(rule, "10.96.0.2") || strings.Contains(rule, "default/empty") || strings.Contains(rule, "10.244.1.2") {
					t.Errorf("nat rule for the endpoint-less service: %q", rule)
				}
			}
			// Only web gets a service chain.
			var svcChains []string
			for _, c := range r.chains["nat"] {
				if strings.HasPrefix(c, svcPrefix) {
					svcChains = append(svcChains, c)
				}
			}
			if len(svcChains) != 1 || svcChains[0] != svcChainOf(t, r, "10.96.0.1/32", 80) {
				t.Errorf("service chains %v, want only web's", svcChains)
			}
		})
	}
}

var ipv4RE = regexp.MustCompile(`\b\d+\.\d+\.\d+\.\d+\b`)

func TestRenderFamilies(t *testing.T) {
	snap := services.Snapshot{Services: []services.ServiceView{
		view("bench", "dual", []string{"10.96.0.1", "fd00:10:96::1"},
			ep("a", true, "10.244.1.2", "fd00:10:244:1::2"),
			ep("b", true, "10.244.2.2", "fd00:10:244:2::2")),
		view("bench", "v4only", []string{"10.96.0.2"}, ep("c", true, "10.244.1.3")),
		view("bench", "v6only", []string{"fd00:10:96::3"}, ep("d", true, "fd00:10:244:1::4")),
	}}

	v6 := Render(IPv6, snap, nil)
	r6 := parseRestore(t, v6)
	if m := ipv4RE.FindAllString(string(v6), -1); len(m) > 0 {
		t.Errorf("IPv6 rules contain IPv4 addresses %v:\n%s", m, v6)
	}
	if bytes.Contains(v6, []byte("v4only")) {
		t.Errorf("IPv6 rules mention the IPv4-only service:\n%s", v6)
	}
	chain := svcChainOf(t, r6, "fd00:10:96::1/128", 80)
	var dnat []string
	for _, rule := range r6.chainRules("nat", chain) {
		sep := r6.chainRules("nat", target(rule))
		if len(sep) != 2 {
			t.Fatalf("endpoint chain rules %q", sep)
		}
		if !strings.HasPrefix(sep[0], "-s fd00:10:244:") || !strings.Contains(sep[0], "/128 ") {
			t.Errorf("hairpin match %q, want an IPv6 /128 source", sep[0])
		}
		_, d, _ := strings.Cut(sep[1], "--to-destination ")
		dnat = append(dnat, d)
	}
	if want := []string{"[fd00:10:244:1::2]:8080", "[fd00:10:244:2::2]:8080"}; !slices.Equal(dnat, want) {
		t.Errorf("IPv6 DNAT destinations %v, want %v", dnat, want)
	}
	svcChainOf(t, r6, "fd00:10:96::3/128", 80)
	if n := len(r6.chainRules("nat", chainServices)); n != 2 {
		t.Errorf("IPv6 has %d service rules, want 2 (dual, v6only)", n)
	}

	v4 := Render(IPv4, snap, nil)
	r4 := parseRestore(t, v4)
	if bytes.Contains(v4, []byte("fd00")) || bytes.Contains(v4, []byte("v6only")) {
		t.Errorf("IPv4 rules contain IPv6 addresses or the IPv6-only service:\n%s", v4)
	}
	svcChainOf(t, r4, "10.96.0.1/32", 80)
	svcChainOf(t, r4, "10.96.0.2/32", 80)
	if n := len(r4.chainRules("nat", chainServices)); n != 2 {
		t.Errorf("IPv4 has %d service rules, want 2 (dual, v4only)", n)
	}
}

func TestRenderProtocolsAndPorts(t *testing.T) {
	v := view("default", "multi", []string{"10.96.0.5"}, ep("a", true, "10.244.1.2"))
	v.Ports = []services.Port{
		{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"},
		{Name: "dns", Port: 53, TargetPort: 5353, Protocol: "UDP"},
	}
	r := parseRestore(t, Render(IPv4, services.Snapshot{Services: []services.ServiceView{v}}, nil))
	rules := r.chainRules("nat", chainServices)
	if len(rules) != 2 ||
		!strings.HasPrefix(rules[0], "-d 10.96.0.5/32 -p tcp -m tcp --dport 80 ") ||
		!strings.HasPrefix(rules[1], "-d 10.96.0.5/32 -p udp -m udp --dport 53 ") {
		t.Fatalf("service rules = %q", rules)
	}
	httpChain, dnsChain := target(rules[0]), target(rules[1])
	if httpChain == dnsChain {
		t.Fatalf("both ports share chain %s", httpChain)
	}
	httpSEP := target(r.chainRules("nat", httpChain)[0])
	dnsSEP := target(r.chainRules("nat", dnsChain)[0])
	if httpSEP == dnsSEP {
		t.Fatalf("both ports share endpoint chain %s", httpSEP)
	}
	if got := r.chainRules("nat", dnsSEP); len(got) != 2 || !strings.HasSuffix(got[1], "-m udp -j DNAT --to-destination 10.244.1.2:5353") || !strings.HasPrefix(got[1], "-p udp ") {
		t.Errorf("UDP endpoint chain = %q", got)
	}
}

// TestRenderUnnamedPorts: Kubernetes requires distinct port names on multi-port services; with
// two unnamed ports of one protocol the chain names (hashed from service and port name) collide.
func TestRenderUnnamedPorts(t *testing.T) {
	v := view("default", "multi", []string{"10.96.0.5"}, ep("a", true, "10.244.1.2"))
	v.Ports = []services.Port{
		{Port: 80, TargetPort: 8080, Protocol: "TCP"},
		{Port: 81, TargetPort: 8081, Protocol: "TCP"},
	}
	r := parseRestore(t, Render(IPv4, services.Snapshot{Services: []services.ServiceView{v}}, nil))
	if svcChainOf(t, r, "10.96.0.5/32", 80) == svcChainOf(t, r, "10.96.0.5/32", 81) {
		t.Error("unnamed ports of one service share ONEHOP-SVC/SEP chains, so port 81 would be DNATed to 8080")
	}
}

func TestRenderStale(t *testing.T) {
	snap := services.Snapshot{Services: []services.ServiceView{view("default", "web", []string{"10.96.0.1"}, ep("a", true, "10.244.1.2"))}}
	stale := []string{"ONEHOP-SEP-AAAAAAAAAAAAAAAA", "ONEHOP-SVC-BBBBBBBBBBBBBBBB"}
	out := string(Render(IPv4, snap, stale))
	nat, _, _ := strings.Cut(out, "COMMIT\n")
	lines := strings.Split(nat, "\n")
	idx := func(line string) int {
		t.Helper()
		i := slices.Index(lines, line)
		if i < 0 {
			t.Fatalf("nat section lacks %q:\n%s", line, nat)
		}
		return i
	}
	lastRule := -1
	for i, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			lastRule = i
		}
	}
	for _, c := range stale {
		decl, del := idx(":"+c+" - [0:0]"), idx("-X "+c)
		// Declaring flushes the chain (so nothing references it once ONEHOP-SERVICES is
		// rewritten), deleting comes after every rule.
		if decl > del || del < lastRule {
			t.Errorf("%s: declared at line %d, deleted at %d, last rule at %d", c, decl, del, lastRule)
		}
		if strings.Contains(out[len(nat):], c) {
			t.Errorf("stale chain %s appears outside the nat table", c)
		}
	}
	if !strings.HasSuffix(strings.TrimSuffix(nat, "\n"), "-X "+stale[1]) {
		t.Errorf("nat section does not end with the deletions:\n%s", nat)
	}
	if without := string(Render(IPv4, snap, nil)); strings.Contains(without, "-X") {
		t.Errorf("Render without stale chains deletes something:\n%s", without)
	}
}

func TestChainNames(t *testing.T) {
	var snap services.Snapshot
	for i := range 20 {
		v := view(strings.Repeat("n", 63), fmt.Sprintf("%s-%d", strings.Repeat("s", 60), i), []string{fmt.Sprintf("10.96.0.%d", i+1), fmt.Sprintf("fd00:10:96::%x", i+1)},
			ep("a", true, "10.244.1.2", "fd00:10:244:1::2"), ep("b", true, "10.244.2.2", "fd00:10:244:2::2"))
		v.Ports[0].Name = strings.Repeat("p", 15)
		snap.Services = append(snap.Services, v)
	}
	for _, f := range []Family{IPv4, IPv6} {
		first := Render(f, snap, nil)
		if second := Render(f, snap, nil); !bytes.Equal(first, second) {
			t.Errorf("%s: Render is not deterministic", f)
		}
		r := parseRestore(t, first)
		seen := map[string]bool{}
		for _, c := range append(r.chains["nat"], r.chains["filter"]...) {
			if len(c) > 28 {
				t.Errorf("%s: chain %s is %d characters, iptables allows 28", f, c, len(c))
			}
			if !strings.HasPrefix(c, "ONEHOP-") {
				t.Errorf("%s: chain %s lacks the ONEHOP- prefix", f, c)
			}
			seen[c] = true
		}
		if want := 3 + 20*(1+2); len(seen) != want { // ONEHOP-SERVICES is in both tables
			t.Errorf("%s: %d distinct chains, want %d", f, len(seen), want)
		}
	}

	// A service's chains do not depend on the rest of the snapshot, its VIP or the version.
	one := services.Snapshot{Version: 1, Services: []services.ServiceView{view("default", "web", []string{"10.96.0.1"}, ep("a", true, "10.244.1.2"))}}
	more := services.Snapshot{Version: 9, Services: []services.ServiceView{
		view("default", "aaa", []string{"10.96.0.7"}, ep("x", true, "10.244.1.7")),
		view("default", "web", []string{"10.96.0.1"}, ep("a", true, "10.244.1.2"), ep("b", true, "10.244.2.2")),
	}}
	r1, r2 := parseRestore(t, Render(IPv4, one, nil)), parseRestore(t, Render(IPv4, more, nil))
	c1, c2 := svcChainOf(t, r1, "10.96.0.1/32", 80), svcChainOf(t, r2, "10.96.0.1/32", 80)
	if c1 != c2 {
		t.Errorf("web's service chain changed from %s to %s when the snapshot grew", c1, c2)
	}
	sep1 := target(r1.chainRules("nat", c1)[0])
	if !slices.ContainsFunc(r2.chainRules("nat", c2), func(rule string) bool { return target(rule) == sep1 }) {
		t.Errorf("endpoint a's chain %s is not reused when another endpoint is added", sep1)
	}
}

func TestStaleChains(t *testing.T) {
	snap := services.Snapshot{Services: []services.ServiceView{
		view("default", "web", []string{"10.96.0.1"}, ep("a", true, "10.244.1.2"), ep("b", true, "10.244.2.2")),
		view("default", "empty", []string{"10.96.0.2"}),
	}}
	r := parseRestore(t, Render(IPv4, snap, nil))
	webChain := svcChainOf(t, r, "10.96.0.1/32", 80)
	webSEPs := []string{target(r.chainRules("nat", webChain)[0]), target(r.chainRules("nat", webChain)[1])}

	// What a node that still has a removed service, a removed endpoint and foreign rules saves.
	save := `# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 04:08:57 2026
*nat
:PREROUTING ACCEPT [12:720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:KUBE-SVC-ABCDEFGHIJKLMNOP - [0:0]
:ONEHOP-MARK-MASQ - [0:0]
:ONEHOP-POSTROUTING - [0:0]
:ONEHOP-SEP-GONEENDPOINT0000 - [0:0]
:ONEHOP-SEP-ZZZREMOVEDSVC000 - [0:0]
:ONEHOP-SERVICES - [0:0]
:` + webChain + ` - [0:0]
:` + webSEPs[0] + ` - [4:240]
:` + webSEPs[1] + ` - [0:0]
:ONEHOP-SVC-AAAREMOVEDSVC000 - [0:0]
-A PREROUTING -m comment --comment "onehop service portals" -j ONEHOP-SERVICES
-A ONEHOP-SERVICES -d 10.96.0.9/32 -p tcp -m tcp --dport 80 -j ONEHOP-SVC-AAAREMOVEDSVC000
-A ONEHOP-SVC-AAAREMOVEDSVC000 -j ONEHOP-SEP-ZZZREMOVEDSVC000
-A ` + webChain + ` -j ` + webSEPs[0] + `
COMMIT
# Completed on Sun Nov 22 04:08:57 2026
*filter
:ONEHOP-SVC-INFILTERTABLE000 - [0:0]
COMMIT
`
	got := staleChains([]byte(save), IPv4, snap)
	// Sorted; the fixed chains, live chains and foreign chains are kept. (The filter-table line
	// is reported as well: staleChains does not track tables, and we never create such a chain.)
	want := []string{"ONEHOP-SEP-GONEENDPOINT0000", "ONEHOP-SEP-ZZZREMOVEDSVC000", "ONEHOP-SVC-AAAREMOVEDSVC000", "ONEHOP-SVC-INFILTERTABLE000"}
	if !slices.Equal(got, want) {
		t.Errorf("staleChains = %v, want %v", got, want)
	}

	// When web loses its endpoints, its chains become stale too.
	drained := services.Snapshot{Services: []services.ServiceView{view("default", "web", []string{"10.96.0.1"}, ep("a", false, "10.244.1.2"))}}
	got = staleChains(Render(IPv4, snap, nil), IPv4, drained)
	want = append([]string{webChain}, webSEPs...)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("after draining web, staleChains = %v, want %v", got, want)
	}

	// Nothing is stale against an empty table or the rules of the same snapshot.
	for name, save := range map[string][]byte{"empty": nil, "same": Render(IPv4, snap, nil)} {
		if got := staleChains(save, IPv4, snap); len(got) != 0 {
			t.Errorf("%s: staleChains = %v, want none", name, got)
		}
	}
	// The family matters: IPv4 chains are stale for an IPv6-only view of the same service.
	if got := staleChains(Render(IPv4, snap, nil), IPv6, snap); len(got) != 3 {
		t.Errorf("IPv4 chains checked against IPv6 rules: stale %v, want web's 3 chains", got)
	}
}

// TestSyncNetns programs a real network namespace twice and checks removals and hooks.
func TestSyncNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := "onehop-kptest-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", ns, err, out)
		}
	})
	run := func(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
		}
		return out, nil
	}

	web := view("default", "web", []string{"10.96.0.1", "fd00:10:96::1"},
		ep("web-0", true, "10.244.1.2", "fd00:10:244:1::2"), ep("web-1", true, "10.244.2.2", "fd00:10:244:2::2"))
	db := view("default", "db", []string{"10.96.0.2", "fd00:10:96::2"}, ep("db-0", true, "10.244.1.3", "fd00:10:244:1::3"))
	empty := view("default", "empty", []string{"10.96.0.3", "fd00:10:96::3"})
	both := services.Snapshot{Version: 1, Services: []services.ServiceView{db, empty, web}}
	webOnly := services.Snapshot{Version: 2, Services: []services.ServiceView{web}}

	for _, tt := range []struct {
		f                Family
		webVIP, dbVIP    string
		emptyVIP, webSEP string
	}{
		{IPv4, "10.96.0.1/32", "10.96.0.2/32", "10.96.0.3/32", "10.244.2.2:8080"},
		{IPv6, "fd00:10:96::1/128", "fd00:10:96::2/128", "fd00:10:96::3/128", "[fd00:10:244:2::2]:8080"},
	} {
		t.Run(string(tt.f), func(t *testing.T) {
			ctx := context.Background()
			save := func(table string) string {
				t.Helper()
				out, err := run(ctx, nil, tt.f.Binary()+"-save", "-t", table)
				if err != nil {
					t.Fatal(err)
				}
				return string(out)
			}
			rendered := parseRestore(t, Render(tt.f, both, nil))
			webChain, dbChain := svcChainOf(t, rendered, tt.webVIP, 80), svcChainOf(t, rendered, tt.dbVIP, 80)
			dbSEP := target(rendered.chainRules("nat", dbChain)[0])

			if err := Sync(ctx, run, tt.f, both); err != nil {
				t.Fatal(err)
			}
			nat := save("nat")
			for _, c := range []string{webChain, dbChain, dbSEP} {
				if !strings.Contains(nat, ":"+c+" ") {
					t.Fatalf("after the first Sync, chain %s is missing:\n%s", c, nat)
				}
			}
			if !strings.Contains(nat, "--to-destination "+tt.webSEP) {
				t.Errorf("no DNAT to %s:\n%s", tt.webSEP, nat)
			}
			if filter := save("filter"); !strings.Contains(filter, "-A ONEHOP-SERVICES -d "+tt.emptyVIP) || !strings.Contains(filter, "-j REJECT") {
				t.Errorf("no REJECT for the endpoint-less service in the filter table:\n%s", filter)
			}

			if err := Sync(ctx, run, tt.f, webOnly); err != nil {
				t.Fatal(err)
			}
			nat = save("nat")
			for _, c := range []string{dbChain, dbSEP} {
				if strings.Contains(nat, c) {
					t.Errorf("after db was removed, its chain %s remains:\n%s", c, nat)
				}
			}
			if strings.Contains(nat, tt.dbVIP) {
				t.Errorf("after db was removed, its VIP %s is still matched:\n%s", tt.dbVIP, nat)
			}
			if !strings.Contains(nat, ":"+webChain+" ") || strings.Count(nat, "-A "+webChain+" ") != 2 {
				t.Errorf("web's chain %s is missing or has the wrong number of rules:\n%s", webChain, nat)
			}
			if n := strings.Count(nat, "-A ONEHOP-SERVICES "); n != 1 {
				t.Errorf("ONEHOP-SERVICES has %d rules after two Syncs, want 1 (web):\n%s", n, nat)
			}
			filter := save("filter")
			if strings.Contains(filter, "-j REJECT") {
				t.Errorf("the removed endpoint-less service is still rejected:\n%s", filter)
			}
			hooks := []struct{ table, text string }{
				{"nat", `-A PREROUTING -m comment --comment "onehop service portals" -j ONEHOP-SERVICES`},
				{"nat", `-A OUTPUT -m comment --comment "onehop service portals" -j ONEHOP-SERVICES`},
				{"nat", `-A POSTROUTING -m comment --comment "onehop service portals" -j ONEHOP-POSTROUTING`},
				{"filter", `-A FORWARD -m comment --comment "onehop service portals" -j ONEHOP-SERVICES`},
				{"filter", `-A OUTPUT -m comment --comment "onehop service portals" -j ONEHOP-SERVICES`},
			}
			text := map[string]string{"nat": nat, "filter": filter}
			for _, h := range hooks {
				if n := strings.Count(text[h.table], h.text+"\n"); n != 1 {
					t.Errorf("hook %q appears %d times in %s after two Syncs, want 1:\n%s", h.text, n, h.table, text[h.table])
				}
			}

			// A third Sync of the same snapshot changes nothing.
			if err := Sync(ctx, run, tt.f, webOnly); err != nil {
				t.Fatal(err)
			}
			strip := func(s string) string {
				var keep []string
				for _, l := range strings.Split(s, "\n") {
					if !strings.HasPrefix(l, "#") {
						keep = append(keep, l)
					}
				}
				return strings.Join(keep, "\n")
			}
			if again := save("nat"); strip(again) != strip(nat) {
				t.Errorf("a repeated Sync changed the nat table:\n%s\nwas\n%s", again, nat)
			}
		})
	}
}
