package istiod

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/test/xds"
	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/test"
)

var (
	dumpYAML  = flag.Bool("istiod.yaml", false, "log the Kubernetes YAML given to istio's fake")
	istioLogs = flag.String("istiod.log-level", "warn", "istiod's log level (debug, info, warn, error, none)")
)

func TestMain(m *testing.M) {
	flag.Parse()
	o := istiolog.DefaultOptions()
	lvl := map[string]istiolog.Level{"debug": istiolog.DebugLevel, "info": istiolog.InfoLevel, "warn": istiolog.WarnLevel,
		"error": istiolog.ErrorLevel, "none": istiolog.NoneLevel}[*istioLogs]
	o.SetDefaultOutputLevel(istiolog.OverrideScopeName, lvl)
	if err := istiolog.Configure(o); err != nil {
		fmt.Fprintln(os.Stderr, "istio log:", err)
	}
	if os.Geteuid() == 0 {
		sweepLeftovers()
	}
	os.Exit(m.Run())
}

// startIstiod runs istiod's config and xDS generators over a fake Kubernetes API holding
// kubeYAML (and istioYAML in its config store) on a real gRPC listener on 127.0.0.1; with
// ambient, the ambient index and workload API generators too. It stops when the test ends.
func startIstiod(t *testing.T, kubeYAML, istioYAML string, ambient bool) (*xds.FakeDiscoveryServer, string) {
	t.Helper()
	if ambient {
		// As istiod with PILOT_ENABLE_AMBIENT=true (read at init, so set both flags it drives).
		test.SetForTest(t, &features.EnableAmbient, true)
		test.SetForTest(t, &features.EnableAmbientWaypoints, true)
	}
	if *dumpYAML {
		t.Logf("Kubernetes objects:\n%s", kubeYAML)
	}
	start := time.Now()
	fake := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		KubernetesObjectString: kubeYAML,
		ConfigString:           istioYAML,
		ListenerBuilder:        func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
	})
	t.Logf("istiod fake serving xDS on %s (ambient %v), started in %v", fake.Listener.Addr(), ambient, time.Since(start).Round(time.Millisecond))
	return fake, fake.Listener.Addr().String()
}

// check is one VIP:port and what connections to it must see.
type check struct {
	name   string
	vip    string
	port   int
	host   string   // the service's hostname, to find it in /status
	pods   []string // every one must answer, and nothing else
	n      int      // connections
	rr     bool     // exact round robin over pods
	shares map[string]float64
	// refused: no endpoints; every connection must be refused fast, never answered.
	refused bool
	// unreachable: must not be served through onehop (no answer); how it fails is logged.
	unreachable bool
	// issue: what GET /services must say of the VIP:port (needs_waypoint, rejected); "" none.
	issue string
	why   string // what this case is about, for failure messages
}

func (c check) target() string { return net.JoinHostPort(c.vip, strconv.Itoa(c.port)) }

// checks are the static fixtures, as they must behave in mode m.
func checks(m agentMode) []check {
	wl := m.workload()
	cs := []check{
		{name: "kubernetes", vip: vipKubernetes, port: 443, host: "kubernetes.default.svc.cluster.local", pods: []string{"apiserver"}, n: 10,
			why: "selector-less service, endpoint from its EndpointSlice only (no pod)"},
		{name: "kube-dns-tcp", vip: vipKubeDNS, port: 53, host: "kube-dns.kube-system.svc.cluster.local", pods: []string{"coredns-1", "coredns-2"}, n: 60,
			why: "port 53 is both UDP (dns) and TCP (dns-tcp)"},
		{name: "kube-dns-metrics", vip: vipKubeDNS, port: 9153, host: "kube-dns.kube-system.svc.cluster.local", pods: []string{"coredns-1", "coredns-2"}, n: 60},
		{name: "http", vip: vipWeb, port: 80, host: "web.shop.svc.cluster.local", pods: []string{"web-1", "web-2"}, n: 60,
			why: "HTTP port: istiod sends it in the 0.0.0.0_80 listener with RDS route 80, shared with other services on port 80"},
		{name: "tcp", vip: vipDB, port: 5432, host: "db.shop.svc.cluster.local", pods: []string{"db-1", "db-2"}, n: 60},
		{name: "unnamed-port-sniffed", vip: vipSniff, port: 7000, host: "sniff.shop.svc.cluster.local", pods: []string{"sniff-1", "sniff-2"}, n: 60,
			why: "protocol sniffing: HTTP and TCP filter chains for the same VIP:port"},
		{name: "multi-port-http", vip: vipMulti, port: 80, host: "multi.shop.svc.cluster.local", pods: []string{"multi-1", "multi-2"}, n: 60,
			why: "a VirtualService routes /api to web: at connect() everything follows the catch-all route"},
		{name: "multi-port-grpc", vip: vipMulti, port: 9090, host: "multi.shop.svc.cluster.local", pods: []string{"multi-1", "multi-2"}, n: 60},
		{name: "multi-port-tcp", vip: vipMulti, port: 6379, host: "multi.shop.svc.cluster.local", pods: []string{"multi-1", "multi-2"}, n: 60},
		{name: "no-endpoints-http", vip: vipEmpty, port: 80, host: "empty.shop.svc.cluster.local", refused: true, n: 10,
			why: "an HTTP service on the same port as others, selecting no pod"},
		{name: "no-endpoints-tcp", vip: vipEmpty, port: 9000, host: "empty.shop.svc.cluster.local", refused: true, n: 10},
		{name: "unknown-vip-on-http-port", vip: vipUnknown, port: 80, host: "no-such-service", unreachable: true, n: 2,
			why: "no service has this VIP; port 80 has a 0.0.0.0_80 listener whose allow_any virtual host passes through to the original destination"},
		{name: "serviceentry-static", vip: vipLegacy, port: 8000, host: "legacy.example.com", pods: []string{"legacy-1", "legacy-2"}, n: 60,
			why: "ServiceEntry with addresses and STATIC endpoints"},
	}
	if wl {
		// The workload API carries neither DestinationRule LB policies nor VirtualService
		// weights (a waypoint applies those): plain spread over every endpoint.
		cs = append(cs,
			check{name: "roundrobin-dr", vip: vipRR, port: 7070, host: "rr.shop.svc.cluster.local", pods: []string{"rr-1", "rr-2", "rr-3"}, n: 90},
			check{name: "weighted-vs", vip: vipSplit, port: 7100, host: "split.shop.svc.cluster.local", pods: []string{"split-v1", "split-v2"}, n: 60},
			check{name: "exportto-other-namespace", vip: vipPrivate, port: 8443, host: "private.team.svc.cluster.local", pods: []string{"private-1"}, n: 10,
				why: "exportTo '.' does not hide a service from ztunnels"},
			check{name: "waypoint", vip: vipReviews, port: 9080, host: "reviews.shop.svc.cluster.local", pods: []string{"waypoint-1"}, n: 20,
				why: "service labelled istio.io/use-waypoint: connections must land on the waypoint's pod"})
	} else {
		for i := range cs {
			if cs[i].name == "multi-port-http" {
				cs[i].issue = "needs_waypoint" // a sidecar gets the path route; never silently dropped
			}
		}
		cs = append(cs,
			check{name: "roundrobin-dr", vip: vipRR, port: 7070, host: "rr.shop.svc.cluster.local", pods: []string{"rr-1", "rr-2", "rr-3"}, n: 30, rr: true,
				why: "DestinationRule loadBalancer ROUND_ROBIN"},
			check{name: "weighted-vs", vip: vipSplit, port: 7100, host: "split.shop.svc.cluster.local", pods: []string{"split-v1", "split-v2"}, n: 400,
				shares: map[string]float64{"split-v1": 0.8, "split-v2": 0.2}, why: "TCP VirtualService, 80/20 over two subsets"},
			check{name: "exportto-other-namespace", vip: vipPrivate, port: 8443, host: "private.team.svc.cluster.local", unreachable: true, n: 3,
				why: "exportTo '.' in namespace team: not visible to a sidecar in " + agentNamespace},
			check{name: "use-waypoint-label-ignored", vip: vipReviews, port: 9080, host: "reviews.shop.svc.cluster.local", pods: []string{"reviews-1", "reviews-2"}, n: 60,
				why: "without ambient, sidecars go straight to the service's pods"})
	}
	return cs
}

// TestIstiod runs the agent against istiod's generators as a sidecar (SotW and Delta) and as a
// ztunnel (workload API), over one lab.
func TestIstiod(t *testing.T) {
	l := newLab(t, worldPods())
	for _, m := range []agentMode{sidecarSotW, sidecarDelta, workloadAPI} {
		t.Run(m.name, func(t *testing.T) { runMode(t, l, m) })
	}
	if hits := l.hitsOf(); len(hits) > 0 {
		keys := make([]string, 0, len(hits))
		for k, v := range hits {
			keys = append(keys, fmt.Sprintf("%s=%d", k, v))
		}
		sort.Strings(keys)
		t.Logf("connections accepted per pod:port over the whole run: %s", strings.Join(keys, " "))
	}
}

// env is one mode's running setup.
type env struct {
	l    *lab
	m    agentMode
	fake *xds.FakeDiscoveryServer
	a    *agent
	b    kubeBuilder
}

// setup starts istiod's fake for the lab and the agent for node n1 in mode m, enrolls the
// client pod and waits until the agent is ready.
func setup(t *testing.T, l *lab, m agentMode) *env {
	t.Helper()
	fake, addr := startIstiod(t, kubeWorld(t, labKube(l, worldPods()), m), istioConfig(l.ip), m.workload())
	a := startAgent(t, l, "n1", addr, m)
	a.waitUp(t, 15*time.Second)
	a.enroll(t, l.c.NetnsPath("client"))
	e := &env{l: l, m: m, fake: fake, a: a, b: labKube(l, worldPods())}
	took := a.waitReady(t, 30*time.Second, func() { e.logShapes(t) })
	t.Logf("agent ready %v after its admin socket answered", took.Round(time.Millisecond))
	return e
}

// logShapes logs the proxies istiod sees and what it generates for them.
func (e *env) logShapes(t *testing.T) {
	t.Helper()
	proxies := logConnections(t, e.fake)
	if e.m.workload() {
		t.Logf("workload API resources:\n%s", joinLines(workloadShapes(e.fake)))
		return
	}
	for _, p := range proxies {
		t.Logf("xDS istiod generates for %s:\n%s", p.ID, joinLines(envoyShapes(e.fake, p)))
	}
}

func runMode(t *testing.T, l *lab, m agentMode) {
	e := setup(t, l, m)
	_, raw, err := e.a.status()
	if err != nil {
		t.Errorf("GET /status: %v", err)
	} else {
		t.Logf("GET /status after ready: %s", clip(string(raw), 20000))
	}
	e.logShapes(t)
	e.logProgrammed(t)
	t.Run("ready-means-programmed", func(t *testing.T) { e.readyMeansProgrammed(t, checks(m)) })
	for _, c := range checks(m) {
		t.Run(c.name, func(t *testing.T) {
			e.logStatusFor(t, c.vip, c.host)
			e.run(t, c)
			e.checkIssue(t, c)
		})
	}
	t.Run("scale-to-zero-and-back", func(t *testing.T) { e.scaleToZeroAndBack(t) })
	t.Run("new-service", func(t *testing.T) { e.newService(t) })
	if t.Failed() {
		e.logShapes(t)
	}
}

// logStatusFor logs what GET /services says about a VIP or hostname (programmed, skipped, why).
func (e *env) logStatusFor(t *testing.T, vip, host string) {
	t.Helper()
	list, err := e.a.services()
	if err != nil {
		t.Logf("GET /services: %v", err)
		return
	}
	var found []string
	for i, svc := range list {
		grepJSON(fmt.Sprintf("services[%d]", i), svc, needles(vip, host), &found)
	}
	if len(found) == 0 {
		t.Logf("/services says nothing about %s or %s", vip, host)
		return
	}
	t.Logf("/services about %s (%s):\n  %s", vip, host, strings.Join(found, "\n  "))
}

// checkIssue checks that GET /services reports what c expects of its VIP:port, and nothing
// when it expects nothing (envoy mode lists each VIP:port; workload mode lists issues per
// service and is not checked here).
func (e *env) checkIssue(t *testing.T, c check) {
	t.Helper()
	if e.m.workload() {
		return
	}
	list, err := e.a.services()
	if err != nil {
		t.Fatalf("GET /services: %v", err)
	}
	for _, svc := range list {
		if svc["service"] != c.target() {
			continue
		}
		if got, _ := svc["issue"].(string); got != c.issue {
			t.Errorf("/services reports issue %q for %s (%v), want %q", got, c.target(), svc["reason"], c.issue)
		}
		return
	}
	if !c.unreachable {
		t.Errorf("/services does not list %s", c.target())
	}
}

// logProgrammed logs the figure of the closing note: how many services the agent programmed
// from istiod's config, and each one it did not program as asked, with the reason.
func (e *env) logProgrammed(t *testing.T) {
	t.Helper()
	list, err := e.a.services()
	if err != nil {
		t.Errorf("GET /services: %v", err)
		return
	}
	programmed, issues := 0, []string{}
	for _, svc := range list {
		if p, ok := svc["programmed"]; ok && p != false && p != nil {
			programmed++
		}
		if is, ok := svc["issue"]; ok {
			issues = append(issues, fmt.Sprintf("%v %v: %v", svc["service"], is, svc["reason"]))
		}
		if is, ok := svc["issues"]; ok {
			issues = append(issues, fmt.Sprintf("%v: %s", svc["name"], compact(is)))
		}
	}
	t.Logf("FIGURE %s: %d services listed, %d programmed, %d with issues:\n  %s", e.m.name, len(list), programmed, len(issues), strings.Join(issues, "\n  "))
}

func needles(vip, host string) func(string) bool {
	return func(s string) bool {
		return s == vip || strings.Contains(s, vip+":") || strings.Contains(s, vip+"/") || strings.Contains(s, "|"+host) || strings.Contains(s, host)
	}
}

// grepJSON collects the objects of a decoded JSON document that mention what match accepts:
// an object holding a matching string value, or the value under a matching key.
func grepJSON(path string, v any, match func(string) bool, out *[]string) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		direct := false
		for _, k := range keys {
			if s, ok := x[k].(string); ok && match(s) {
				direct = true
			}
		}
		if direct {
			*out = append(*out, path+": "+clip(compact(x), 2000))
			return
		}
		for _, k := range keys {
			if match(k) {
				*out = append(*out, path+"."+k+": "+clip(compact(x[k]), 2000))
				continue
			}
			grepJSON(path+"."+k, x[k], match, out)
		}
	case []any:
		for i, c := range x {
			if s, ok := c.(string); ok && match(s) {
				*out = append(*out, fmt.Sprintf("%s[%d]: %q", path, i, s))
				continue
			}
			grepJSON(fmt.Sprintf("%s[%d]", path, i), c, match, out)
		}
	}
}

func compact(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + fmt.Sprintf("...(%d more bytes)", len(s)-n)
	}
	return s
}

// readyMeansProgrammed checks that /readyz 200 means the whole first config is in the kernel:
// right after it, one connection to each fixture already behaves as it must (the fixtures
// below then settle before measuring, so a late config would otherwise go unnoticed).
func (e *env) readyMeansProgrammed(t *testing.T, cs []check) {
	for _, c := range cs {
		if c.unreachable {
			continue
		}
		r := e.l.connect(t, "client", c.target(), 1, 300*time.Millisecond)
		switch {
		case c.refused && r.Errors["refused"] != 1:
			t.Errorf("%s (%s) right after ready: want refused, got %s", c.target(), c.name, r)
		case !c.refused && (r.OK != 1 || !contains(c.pods, r.Sequence[0])):
			t.Errorf("%s (%s) right after ready: want an answer from %v, got %s", c.target(), c.name, c.pods, r)
		}
	}
}

// settle waits (bounded) until a single connection behaves as c expects, so the measurement
// starts once the agent has the config; it returns how long that took.
func (e *env) settle(t *testing.T, c check, within time.Duration) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	for {
		r := e.l.connect(t, "client", c.target(), 1, 300*time.Millisecond)
		if c.refused && r.Errors["refused"] == 1 || !c.refused && r.OK == 1 && contains(c.pods, r.Sequence[0]) {
			return time.Since(start), true
		}
		if time.Since(start) > within {
			t.Logf("%s did not settle within %v: last %s", c.target(), within, r)
			return time.Since(start), false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// run measures one check and asserts it.
func (e *env) run(t *testing.T, c check) {
	t.Helper()
	why := ""
	if c.why != "" {
		why = " (" + c.why + ")"
	}
	if c.unreachable {
		r := e.l.connect(t, "client", c.target(), c.n, 2*time.Second)
		t.Logf("%s: %s", c.name, r)
		if r.OK != 0 {
			t.Errorf("%s%s: %d of %d connections were answered (%v), want none through onehop", c.target(), why, r.OK, r.Count, r.Answers)
		} else {
			t.Logf("documented: %s is not reachable; connections fail with %v, the longest after %.1f ms: %v",
				c.target(), r.Errors, r.MaxFailedDialMs, r.ErrorSamples)
		}
		return
	}
	if took, ok := e.settle(t, c, 10*time.Second); ok && took > 500*time.Millisecond {
		t.Logf("%s settled after %v", c.target(), took.Round(time.Millisecond))
	}
	if c.refused {
		r := e.l.connect(t, "client", c.target(), c.n, 2*time.Second)
		t.Logf("%s: %s", c.name, r)
		if r.OK > 0 {
			t.Errorf("%s%s has no endpoints, but %d connections were answered: %v", c.target(), why, r.OK, r.Answers)
		}
		if r.Errors["refused"] != c.n {
			t.Errorf("%s%s has no endpoints: want all %d connections refused, got %v %v", c.target(), why, c.n, r.Errors, r.ErrorSamples)
		}
		if r.MaxFailedDialMs > 100 {
			t.Errorf("%s%s: a failed connection took %.1f ms, want a refusal within 100 ms (not a timeout)", c.target(), why, r.MaxFailedDialMs)
		}
		return
	}
	r := e.l.connect(t, "client", c.target(), c.n, 2*time.Second)
	t.Logf("%s: %s", c.name, r)
	assertAnswers(t, c, r)
}

// assertAnswers checks a connection sample: every connection answered, only by c.pods, all of
// them, with the right spread, and getpeername shows the VIP.
func assertAnswers(t *testing.T, c check, r connectResult) {
	t.Helper()
	why := ""
	if c.why != "" {
		why = " (" + c.why + ")"
	}
	if r.failed() > 0 {
		t.Errorf("%s%s: %d of %d connections failed: %v %v (longest failed dial %.1f ms)", c.target(), why, r.failed(), r.Count, r.Errors, r.ErrorSamples, r.MaxFailedDialMs)
	}
	for pod, n := range r.Answers {
		if !contains(c.pods, pod) {
			t.Errorf("%s%s: %d connections answered by %s, which is not behind it (want %v)", c.target(), why, n, pod, c.pods)
		}
	}
	if r.OK > 0 && (len(r.Peers) != 1 || r.Peers[0] != c.target()) {
		t.Errorf("%s%s: getpeername saw %v, want only the VIP %s", c.target(), why, r.Peers, c.target())
	}
	if r.OK < c.n/2 {
		return // the spread of a few answers says nothing more
	}
	switch {
	case c.rr:
		k := len(c.pods)
		var seq []string
		for _, s := range r.Sequence {
			if !strings.HasPrefix(s, "!") {
				seq = append(seq, s)
			}
		}
		for i := 0; i+k <= len(seq); i += k {
			window := map[string]bool{}
			for _, s := range seq[i : i+k] {
				window[s] = true
			}
			if len(window) != k {
				t.Errorf("%s%s: not round robin: connections %d..%d went to %v (sequence %v)", c.target(), why, i, i+k-1, seq[i:i+k], seq)
				break
			}
		}
		for i := k; i < len(seq); i++ {
			if seq[i] != seq[i-k] {
				t.Errorf("%s%s: not round robin: connection %d went to %s, %d before to %s (sequence %v)", c.target(), why, i, seq[i], k, seq[i-k], seq)
				break
			}
		}
	case c.shares != nil:
		for pod, p := range c.shares {
			lo, hi := binomialBounds(r.OK, p)
			if got := r.Answers[pod]; got < lo || got > hi {
				t.Errorf("%s%s: %s answered %d of %d connections, want %.0f%% (between %d and %d)", c.target(), why, pod, got, r.OK, p*100, lo, hi)
			}
		}
	default:
		p := 1 / float64(len(c.pods))
		for _, pod := range c.pods {
			lo, hi := binomialBounds(r.OK, p)
			if got := r.Answers[pod]; got < lo || got > hi {
				t.Errorf("%s%s: %s answered %d of %d connections, want an even spread over %v (between %d and %d)", c.target(), why, pod, got, r.OK, c.pods, lo, hi)
			}
		}
	}
}

// binomialBounds is n·p ± 4.5 standard deviations (a false alarm about once in 150,000 checks),
// and at least 1 for p > 0.
func binomialBounds(n int, p float64) (int, int) {
	mean, sd := float64(n)*p, math.Sqrt(float64(n)*p*(1-p))
	lo, hi := int(math.Ceil(mean-4.5*sd)), int(math.Floor(mean+4.5*sd))
	if lo < 1 && p > 0 {
		lo = 1
	}
	return lo, hi
}

// waitFor polls a check until a single connection behaves as want says, bounded.
func (e *env) waitFor(t *testing.T, target string, within time.Duration, want func(connectResult) bool) (time.Duration, connectResult, bool) {
	t.Helper()
	start := time.Now()
	for {
		r := e.l.connect(t, "client", target, 1, 300*time.Millisecond)
		if want(r) {
			return time.Since(start), r, true
		}
		if time.Since(start) > within {
			return time.Since(start), r, false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scaleToZero removes a service's pods from Kubernetes and empties its EndpointSlice, as a
// Deployment scaled to zero does; scaleBack reverses it (pods first, then the slice, as the
// endpoint controller sees them come back).
func (e *env) scaleToZero(t *testing.T, s svcDef, pods []podDef) {
	t.Helper()
	ctx := context.Background()
	kube := e.fake.KubeClient().Kube()
	slices := kube.DiscoveryV1().EndpointSlices(s.Namespace)
	cur, err := slices.Get(ctx, s.Name+"-x7k2p", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints = nil
	if _, err := slices.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if err := kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) scaleBack(t *testing.T, s svcDef, pods []podDef) {
	t.Helper()
	ctx := context.Background()
	kube := e.fake.KubeClient().Kube()
	for _, p := range pods {
		if _, err := kube.CoreV1().Pods(p.Namespace).Create(ctx, e.b.kubePod(p), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	slices := kube.DiscoveryV1().EndpointSlices(s.Namespace)
	cur, err := slices.Get(ctx, s.Name+"-x7k2p", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints = e.b.endpointSlice(s, pods).Endpoints
	if _, err := slices.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) scaleToZeroAndBack(t *testing.T) {
	s := serviceNamed("db")
	pods := e.b.selected(s)
	c := check{name: "db", vip: vipDB, port: 5432, host: s.host(), pods: []string{"db-1", "db-2"}, n: 60}

	e.scaleToZero(t, s, pods)
	changed := time.Now()
	took, last, ok := e.waitFor(t, c.target(), 10*time.Second, func(r connectResult) bool { return r.OK == 0 })
	t.Logf("scaled db to zero: new connections stopped being answered after %v (last: %s)", took.Round(time.Millisecond), last)
	e.logStatusFor(t, c.vip, c.host)
	if !ok {
		t.Errorf("%s: connections still answered 10 s after the service was scaled to zero: %s", c.target(), last)
	}
	r := e.l.connect(t, "client", c.target(), 10, 2*time.Second)
	t.Logf("after scale to zero (%v): %s", time.Since(changed).Round(time.Millisecond), r)
	if r.OK > 0 {
		t.Errorf("%s scaled to zero: %d connections were answered by %v (removed endpoints)", c.target(), r.OK, r.Answers)
	}
	if r.Errors["refused"] != 10 || r.MaxFailedDialMs > 100 {
		t.Errorf("%s scaled to zero: want all 10 connections refused within 100 ms, got %v (longest failed dial %.1f ms) %v",
			c.target(), r.Errors, r.MaxFailedDialMs, r.ErrorSamples)
	}

	e.scaleBack(t, s, pods)
	took, last, ok = e.waitFor(t, c.target(), 10*time.Second, func(r connectResult) bool { return r.OK == 1 })
	t.Logf("scaled db back: connections answered again after %v (last: %s)", took.Round(time.Millisecond), last)
	e.logStatusFor(t, c.vip, c.host)
	if !ok {
		t.Errorf("%s: connections not answered 10 s after the service was scaled back: %s", c.target(), last)
		return
	}
	r = e.l.connect(t, "client", c.target(), c.n, 2*time.Second)
	t.Logf("after scale back: %s", r)
	assertAnswers(t, c, r)
}

// newService creates a Service and its EndpointSlice at runtime (its pod exists from the start).
func (e *env) newService(t *testing.T) {
	ctx := context.Background()
	s := serviceNamed("fresh")
	kube := e.fake.KubeClient().Kube()
	c := check{name: "fresh", vip: vipFresh, port: 8088, host: s.host(), pods: []string{"fresh-1"}, n: 10}
	before := e.l.connect(t, "client", c.target(), 1, 300*time.Millisecond)
	t.Logf("before the service exists: %s", before)
	if before.OK > 0 {
		t.Fatalf("%s answered before the service existed: %s", c.target(), before)
	}
	if _, err := kube.CoreV1().Services(s.Namespace).Create(ctx, e.b.service(s), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, e.b.endpointSlice(s, e.b.selected(s)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	took, last, ok := e.waitFor(t, c.target(), 10*time.Second, func(r connectResult) bool { return r.OK == 1 })
	t.Logf("new service fresh: answered after %v (last: %s)", took.Round(time.Millisecond), last)
	e.logStatusFor(t, c.vip, c.host)
	if !ok {
		t.Errorf("%s: the new service was not reachable within 10 s: %s", c.target(), last)
		return
	}
	r := e.l.connect(t, "client", c.target(), c.n, 2*time.Second)
	t.Logf("new service: %s", r)
	assertAnswers(t, c, r)
}
