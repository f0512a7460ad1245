package datapath

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bpf"
	"github.com/onehop-mesh/onehop/dataplane/model"
)

func TestConnectToVIPReachesAnEndpointAndPeerIsTheVIP(t *testing.T) {
	l := newLab(t, testOptions)
	v4 := l.backends("127.0.0.2", "127.0.0.3")
	v6 := l.backends("::1", "::1")
	l.apply(
		service("10.96.200.1:80", model.Random, v4),
		service("[fd00:96::1]:80", model.Random, v6),
	)
	for _, tc := range []struct {
		name   string
		target string // what the client connects to
		want   []backend
	}{
		{"ipv4", "10.96.200.1:80", v4},
		{"ipv6", "[fd00:96::1]:80", v6},
		{"ipv4 VIP from an AF_INET6 socket", "[::ffff:10.96.200.1]:80", v4},
		{"an address that is no service is left alone", v4[1].addr.String(), v4[1:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := l.connects(clientJob{Target: tc.target, Count: 20})
			got := byBackend(t, rs)
			for name := range got {
				if !strings.Contains(names(tc.want...), name) {
					t.Errorf("connected to backend %q, want one of %s", name, names(tc.want...))
				}
			}
			for _, r := range rs {
				if r.Peer != tc.target {
					t.Fatalf("getpeername returned %s, want the VIP %s", r.Peer, tc.target)
				}
			}
		})
	}
	c, err := l.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c["connect_balanced"] != 60 || c["getpeername_rewritten"] != 60 || c["connect_no_service"] != 20 {
		t.Errorf("counters %v: want connect_balanced 60, getpeername_rewritten 60, connect_no_service 20", c)
	}
}

// chiSquareCritical[df] is the chi-square value a correct spread exceeds with probability 1e-5
// (computed from the closed-form survival function for integer df).
var chiSquareCritical = map[int]float64{1: 19.511, 2: 23.026, 3: 25.902, 4: 28.473}

func TestSpreadFollowsPolicyAndWeights(t *testing.T) {
	l := newLab(t, testOptions)
	bs := l.backends("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
	weighted := service("10.96.200.3:80", model.Random, bs[:2])
	weighted.Priorities[0][0].Weight, weighted.Priorities[0][1].Weight = 90, 10
	for _, tc := range []struct {
		name  string
		svc   model.Service
		n     int
		share map[string]float64 // expected fraction per backend
		exact bool               // round-robin: counts differ by at most one, in strict rotation
	}{
		{"random", service("10.96.200.1:80", model.Random, bs), 2000,
			map[string]float64{"b0": .25, "b1": .25, "b2": .25, "b3": .25}, false},
		{"round-robin", service("10.96.200.2:80", model.RoundRobin, bs), 1000,
			map[string]float64{"b0": .25, "b1": .25, "b2": .25, "b3": .25}, true},
		{"weighted 90/10", weighted, 2000, map[string]float64{"b0": .9, "b1": .1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l.apply(tc.svc)
			vip := netip.AddrPortFrom(tc.svc.Key.VIP, tc.svc.Key.Port).String()
			rs := l.connects(clientJob{Target: vip, Count: tc.n})
			got := byBackend(t, rs)
			chi2 := 0.0
			for name, share := range tc.share {
				want := share * float64(tc.n)
				chi2 += (float64(got[name]) - want) * (float64(got[name]) - want) / want
			}
			if len(got) != len(tc.share) {
				t.Fatalf("connections went to %v, want only %v", got, tc.share)
			}
			if tc.exact {
				for i, r := range rs[len(tc.share):] {
					if r.Backend != rs[i].Backend {
						t.Fatalf("round-robin: connection %d went to %s, connection %d (one rotation before) to %s",
							i+len(tc.share), r.Backend, i, rs[i].Backend)
					}
				}
				return
			}
			if crit := chiSquareCritical[len(tc.share)-1]; chi2 > crit {
				t.Errorf("spread %v over %d connections: chi-square %.1f > %.1f (p < 1e-5)", got, tc.n, chi2, crit)
			}
			t.Logf("spread %v, chi-square %.2f", got, chi2)
		})
	}
}

func TestPriorityLevelsAreUsedOnlyWhenEarlierOnesAreEmpty(t *testing.T) {
	l := newLab(t, testOptions)
	bs := l.backends("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
	none := []backend{}
	for _, tc := range []struct {
		name  string
		prios [][]backend
		want  string
	}{
		{"priority 0 while it has endpoints", [][]backend{bs[:2], bs[2:3]}, "b0,b1"},
		{"priority 1 when 0 is empty", [][]backend{none, bs[2:3]}, "b2"},
		{"priority 3 when 0-2 are empty", [][]backend{none, none, none, bs[3:]}, "b3"},
		{"back to priority 0", [][]backend{bs[1:2], bs[2:3], bs[3:]}, "b1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l.apply(service("10.96.200.1:80", model.Random, tc.prios...))
			got := byBackend(t, l.connects(clientJob{Target: "10.96.200.1:80", Count: 200}))
			for name := range got {
				if !slices.Contains(strings.Split(tc.want, ","), name) {
					t.Fatalf("connections went to %v, want only %s", got, tc.want)
				}
			}
		})
	}
}

// While a client connects in a loop, 1000 services that share their endpoints change 50 times (a
// sliding window over six backends: one endpoint leaves and one joins each time, the count
// varies). Every connection must succeed (the VIP is never missing or empty; with 1000 services
// per Apply, a flush-and-refill would leave each one empty for long enough to be hit), and one
// that started after an Apply returned never reaches an endpoint that Apply removed.
func TestChangingServicesUnderLoadHasNoGapAndNoStaleEndpoint(t *testing.T) {
	opts := testOptions
	opts.MaxServices, opts.MaxSlots = 1024, 16384
	l := newLab(t, opts)
	bs := l.backends("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7")
	window := func(k int) []backend {
		var w []backend
		for i := range 2 + k%3 {
			w = append(w, bs[(k+i)%len(bs)])
		}
		return w
	}
	services := func(k int) []model.Service {
		var out []model.Service
		for i := range 1000 {
			out = append(out, service(fmt.Sprintf("10.96.%d.%d:80", 200+i/250, i%250+1), model.Random, window(k)))
		}
		return out
	}
	const changes = 50
	type applied struct {
		start, done int64 // CLOCK_MONOTONIC around Apply
		names       string
	}
	history := []applied{{names: names(window(0)...)}}
	l.apply(services(0)...)

	c := l.start(clientJob{Target: "10.96.201.1:80", Duration: 2500 * time.Millisecond})
	time.Sleep(200 * time.Millisecond)
	for k := 1; k <= changes; k++ {
		a := applied{start: monotonic(), names: names(window(k)...)}
		st := l.apply(services(k)...)
		a.done = monotonic()
		history = append(history, a)
		if st.ServicesChanged != 1000 {
			t.Fatalf("change %d: %+v, want 1000 services changed", k, st)
		}
		time.Sleep(40 * time.Millisecond)
	}
	rs := c.wait(t)
	byBackend(t, rs) // fails on any failed connection
	for i, r := range rs {
		// The kernel picked the backend during [r.Start, r.End]. Allowed: the config of the last
		// Apply done before r.Start, and of every Apply started before r.End after that.
		first := 0
		for k, a := range history {
			if k > 0 && a.done < r.Start {
				first = k
			}
		}
		ok := false
		for k := first; k < len(history) && (k == first || history[k].start < r.End); k++ {
			ok = ok || slices.Contains(strings.Split(history[k].names, ","), r.Backend)
		}
		if !ok {
			t.Fatalf("connection %d (connect at +%v) reached %s, which no config live then had (config %d: %s)",
				i, time.Duration(r.Start-rs[0].Start), r.Backend, first, history[first].names)
		}
	}
	cnt, err := l.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d connections during %d changes of 1000 services, all succeeded; counters %v", len(rs), changes, cnt)
	if len(rs) < 500 {
		t.Errorf("only %d connections in 2.5 s: the client did not keep connecting", len(rs))
	}
}

func TestOnlyEnrolledNamespacesAreBalanced(t *testing.T) {
	l := newLab(t, testOptions)
	bs := l.backends("127.0.0.2")
	l.apply(service("10.96.200.1:80", model.Random, bs))
	enrolled, err := l.dp.Enrollment.Enrolled()
	if err != nil || !slices.Equal(enrolled, []uint64{l.cookie}) {
		t.Fatalf("Enrolled() = %v, %v; want [%d]", enrolled, err, l.cookie)
	}
	for _, step := range []struct {
		name   string
		enroll bool
	}{{"unenrolled", false}, {"enrolled again", true}, {"unenrolled again", false}} {
		t.Run(step.name, func(t *testing.T) {
			var err error
			if step.enroll {
				err = l.dp.Enrollment.Enroll(l.cookie, l.netnsOptions)
			} else {
				err = l.dp.Enrollment.Unenroll(l.cookie)
			}
			if err != nil {
				t.Fatal(err)
			}
			before, _ := l.dp.Counters()
			rs := l.connects(clientJob{Target: "10.96.200.1:80", Count: 5})
			after, _ := l.dp.Counters()
			for _, r := range rs {
				if step.enroll && (r.Err != "" || r.Backend != "b0") {
					t.Fatalf("enrolled client: %+v, want a connection to b0", r)
				}
				// The test netns has no route to the VIP: untouched, connect fails at once.
				if !step.enroll && !strings.Contains(r.Err, "network is unreachable") {
					t.Fatalf("unenrolled client: %+v, want connect to fail with network unreachable", r)
				}
			}
			if seen := after["connect_seen"] - before["connect_seen"]; seen != 5 {
				t.Errorf("connect_seen grew by %d, want 5", seen)
			}
			if want, got := map[bool]uint64{true: 5}[step.enroll], after["connect_enrolled"]-before["connect_enrolled"]; got != want {
				t.Errorf("connect_enrolled grew by %d, want %d", got, want)
			}
		})
	}
}

func TestSockopsTracksConnectionsUntilClose(t *testing.T) {
	l := newLab(t, testOptions)
	bs := l.backends("127.0.0.2")
	l.apply(service("10.96.200.1:80", model.Random, bs))
	before, err := l.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	c := l.start(clientJob{Target: "10.96.200.1:80", Count: 1, Hold: true})
	r, ok := c.next(t)
	if !ok || r.Err != "" {
		t.Fatalf("client: %+v (stderr %s)", r, c.stderr.String())
	}
	conns, err := l.dp.Conns()
	if err != nil {
		t.Fatal(err)
	}
	want := Conn{
		Src:   netip.MustParseAddrPort(r.Local),
		Dst:   bs[0].addr,
		VIP:   netip.MustParseAddrPort("10.96.200.1:80"),
		Netns: l.cookie,
		// The client read the backend's name up to EOF: the backend closed, the client not yet.
		State:        8, // CLOSE_WAIT
		StateChanges: 1,
	}
	if len(conns) != 1 {
		t.Fatalf("Conns() = %+v, want one connection %+v", conns, want)
	}
	got := conns[0]
	if age := time.Since(got.Established); got.Cookie == 0 || age < 0 || age > time.Minute {
		t.Errorf("connection cookie %d established %v ago: want a cookie and a recent time", got.Cookie, age)
	}
	if got.StateSince.Before(got.Established) || time.Since(got.StateSince) > time.Minute {
		t.Errorf("state since %v, want a recent time after it was established (%v)", got.StateSince, got.Established)
	}
	got.Cookie, got.Established, got.StateSince = 0, time.Time{}, time.Time{}
	if got != want {
		t.Errorf("Conns() = %+v, want %+v", got, want)
	}

	c.stdin.Write([]byte("close\n"))
	c.wait(t)
	if conns, err := l.dp.Conns(); err != nil || len(conns) != 0 {
		t.Errorf("after close Conns() = %+v, %v; want none", conns, err)
	}
	if n := mapLen(t, l.dp.objs.OhOrigdst); n != 0 {
		t.Errorf("after close %s holds %d entries, want none", bpf.OnehopMapOhOrigdst, n)
	}
	after, err := l.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for name, grew := range map[string]uint64{"conns_opened": 1, "conns_closed": 1, "connect_balanced": 1} {
		if after[name]-before[name] != grew {
			t.Errorf("%s grew by %d, want %d", name, after[name]-before[name], grew)
		}
	}
	if after["conns_table_full"] != 0 {
		t.Errorf("conns_table_full = %d, want 0", after["conns_table_full"])
	}
}

func TestAttachRefusesAPathThatIsNoCgroup(t *testing.T) {
	dp := loadDatapath(t, testOptions)
	dir := t.TempDir()
	err := dp.Attach(dir)
	if err == nil || !strings.Contains(err.Error(), "not a cgroup v2 directory") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Attach(%s) = %v, want an error naming the path and saying it is not a cgroup v2 directory", dir, err)
	}
}

// With tracking off, VIPs are still balanced and reported by getpeername, but no connection is
// tracked and no sockops program is attached.
func TestNoConnTrackingStillBalances(t *testing.T) {
	opts := testOptions
	opts.NoConnTracking = true
	l := newLab(t, opts)
	bs := l.backends("127.0.0.2")
	l.apply(service("10.96.200.1:80", model.Random, bs))
	before, err := l.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	c := l.start(clientJob{Target: "10.96.200.1:80", Count: 1, Hold: true})
	r, ok := c.next(t)
	if !ok || r.Err != "" {
		t.Fatalf("client: %+v (stderr %s)", r, c.stderr.String())
	}
	if r.Peer != "10.96.200.1:80" {
		t.Errorf("getpeername returned %s, want the VIP", r.Peer)
	}
	if conns, err := l.dp.Conns(); err != nil || len(conns) != 0 {
		t.Errorf("Conns() = %+v, %v; want none with tracking off", conns, err)
	}
	c.stdin.Write([]byte("close\n"))
	c.wait(t)
	after, _ := l.dp.Counters()
	if after["conns_opened"] != before["conns_opened"] || after["connect_balanced"]-before["connect_balanced"] != 1 {
		t.Errorf("counters: conns_opened %d -> %d (want unchanged), connect_balanced grew %d (want 1)",
			before["conns_opened"], after["conns_opened"], after["connect_balanced"]-before["connect_balanced"])
	}
	for _, a := range l.dp.links {
		if a.prog.pin == "sockops" {
			t.Error("sockops is attached although tracking is off")
		}
	}
}

// A service with no endpoints (scaled to zero) refuses connect()s at once with ECONNREFUSED,
// as kube-proxy's REJECT does, whatever the VIP would reach without onehop; when endpoints come
// back it balances again.
func TestServiceWithoutEndpointsRefusesConnectFast(t *testing.T) {
	l := newLab(t, testOptions)
	bs := l.backends("127.0.0.2")
	// Without onehop this VIP would reach the backend directly: it must not.
	empty := service(bs[0].addr.String(), model.Random) // no priority levels at all
	emptyLevel := service("10.96.201.2:80", model.Random, nil)
	l.apply(empty, emptyLevel)
	for _, target := range []string{bs[0].addr.String(), "10.96.201.2:80"} {
		for _, r := range l.connects(clientJob{Target: target, Count: 5}) {
			if !strings.Contains(r.Err, "connection refused") {
				t.Fatalf("connect to %s (no endpoints) = %+v, want connection refused", target, r)
			}
			if d := time.Duration(r.End - r.Start); d > 50*time.Millisecond {
				t.Errorf("refusing took %v: want it at once", d)
			}
		}
	}
	if c, err := l.dp.Counters(); err != nil || c["connect_refused"] != 10 {
		t.Errorf("counters %v (%v): want connect_refused 10", c, err)
	}
	l.apply(service(bs[0].addr.String(), model.Random, bs))
	if got := byBackend(t, l.connects(clientJob{Target: bs[0].addr.String(), Count: 3})); got[bs[0].name] != 3 {
		t.Fatalf("after endpoints came back: %v", got)
	}
}
