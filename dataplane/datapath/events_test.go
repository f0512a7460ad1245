package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// telemetryLab is a lab whose netns is enrolled with telemetry on, with a reader of its events.
func telemetryLab(t *testing.T, opts Options) (*lab, *EventReader) {
	t.Helper()
	l := newLab(t, opts)
	return l, l.telemetryOn()
}

// telemetryOn enrolls l's netns with telemetry and opens a reader of l.dp's events.
func (l *lab) telemetryOn() *EventReader {
	l.t.Helper()
	l.netnsOptions = NetnsOptions{Telemetry: true}
	if err := l.dp.Enrollment.Enroll(l.cookie, l.netnsOptions); err != nil {
		l.t.Fatal(err)
	}
	rd, err := l.dp.Events()
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { rd.Close() })
	return rd
}

// readEvents reads events until done says it has what it waits for, or fails t after timeout.
func readEvents(t testing.TB, rd *EventReader, timeout time.Duration, done func([]Event) bool) []Event {
	t.Helper()
	var evs []Event
	deadline := time.Now().Add(timeout)
	for !done(evs) {
		rd.SetDeadline(deadline)
		ev, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("after %v: %d events, still waiting:\n%s", timeout, len(evs), dumpEvents(evs))
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// drainEvents reads what arrives within d.
func drainEvents(t testing.TB, rd *EventReader, d time.Duration) []Event {
	t.Helper()
	var evs []Event
	rd.SetDeadline(time.Now().Add(d))
	for {
		ev, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
}

func dumpEvents(evs []Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %s %s first=%v cookie=%d %s->%s vip=%s state=%s err=%v total=%+v delta=%+v\n",
			e.Type, e.Direction, e.First, e.Cookie, e.Src, e.Dst, e.VIP, e.State, e.Err, e.Total, e.Delta)
	}
	return b.String()
}

func countEvents(evs []Event, match func(Event) bool) int {
	n := 0
	for _, e := range evs {
		if match(e) {
			n++
		}
	}
	return n
}

func closes(n int) func([]Event) bool {
	return func(evs []Event) bool {
		return countEvents(evs, func(e Event) bool { return e.Type == EventClose }) >= n
	}
}

// server starts an echo server child in l's cgroup (so its accepted sockets are tracked) on a
// free port of addr, and returns where it listens.
func (l *lab) server(addr string) netip.AddrPort {
	l.t.Helper()
	srv := l.start(clientJob{Target: addr + ":0", Serve: true})
	r, ok := srv.next(l.t)
	if !ok || r.Err != "" {
		l.t.Fatalf("echo server: %+v; stderr %s", r, srv.stderr.String())
	}
	return netip.MustParseAddrPort(r.Local)
}

// echoService starts an echo server child (l.server) on 127.0.0.9 and programs it as the one
// endpoint of service vip.
func (l *lab) echoService(vip string) netip.AddrPort {
	l.t.Helper()
	srv := l.server("127.0.0.9")
	l.apply(service(vip, model.Random, []backend{{name: "srv", addr: srv}}))
	return srv
}

// echoOver runs one echo connection to target sending a line of each size, closed gracefully.
func (l *lab) echoOver(target string, sizes ...int) {
	l.t.Helper()
	c := l.start(clientJob{Target: target, Echo: true, Graceful: true})
	if r, _ := c.next(l.t); r.Err != "" {
		l.t.Fatalf("connect %s: %s", target, r.Err)
	}
	for _, n := range sizes {
		fmt.Fprintln(c.stdin, strings.Repeat("x", n))
		if r, _ := c.next(l.t); r.Err != "" || len(r.Backend) != n {
			l.t.Fatalf("echo of %d bytes: got %d bytes, %s", n, len(r.Backend), r.Err)
		}
	}
	for _, r := range c.wait(l.t) {
		if r.Err != "" {
			l.t.Fatalf("closing: %s", r.Err)
		}
	}
}

// Bytes each way are counted exactly on both sides of a connection (client: outbound, server:
// inbound), no retransmission or loss is reported on a clean path, every event's delta adds up
// to the close's totals, and each side is counted opened once.
func TestTelemetryCountsBytesExactlyOnBothSides(t *testing.T) {
	l, rd := telemetryLab(t, testOptions)
	const vip = "10.96.50.1:80"
	srv := l.echoService(vip)
	sizes := []int{1, 1000, 60000, 7}
	l.echoOver(vip, sizes...)
	want := uint64(0)
	for _, n := range sizes {
		want += uint64(n)
	}
	evs := readEvents(t, rd, 5*time.Second, closes(2))
	for _, dir := range []Direction{DirectionOutbound, DirectionInbound} {
		var mine []Event
		for _, e := range evs {
			if e.Direction == dir {
				mine = append(mine, e)
			}
		}
		if len(mine) < 2 || mine[0].Type != EventOpen || !mine[0].First || mine[len(mine)-1].Type != EventClose {
			t.Fatalf("%s events: want open (first) ... close:\n%s", dir, dumpEvents(mine))
		}
		last := mine[len(mine)-1]
		if last.Total.BytesSent != want || last.Total.BytesReceived != want {
			t.Errorf("%s close: sent %d, received %d bytes; want %d each way\n%s", dir, last.Total.BytesSent, last.Total.BytesReceived, want, dumpEvents(mine))
		}
		if last.Total.Retrans != 0 || last.Total.Lost != 0 {
			t.Errorf("%s close: %d retransmits, %d lost on a clean path", dir, last.Total.Retrans, last.Total.Lost)
		}
		var sum TCPStats
		firsts := 0
		for _, e := range mine {
			sum.BytesSent += e.Delta.BytesSent
			sum.BytesReceived += e.Delta.BytesReceived
			sum.SegsIn += e.Delta.SegsIn
			if e.First {
				firsts++
			}
		}
		if sum.BytesSent != want || sum.BytesReceived != want || sum.SegsIn != last.Total.SegsIn || firsts != 1 {
			t.Errorf("%s: deltas add up to %+v with %d first events; want %d bytes each way, %d segments in, one first", dir, sum, firsts, want, last.Total.SegsIn)
		}
		if last.State != TCPClose || last.Age() <= 0 || last.Established.After(last.Time) {
			t.Errorf("%s close: state %s, age %v", dir, last.State, last.Age())
		}
	}
	out := evs[0]
	for _, e := range evs {
		if e.Direction == DirectionOutbound {
			out = e
		}
	}
	if out.VIP.String() != vip || out.Dst != srv {
		t.Errorf("outbound: VIP %s, peer %s; want %s, %s", out.VIP, out.Dst, vip, srv)
	}
}

// Connects that never get established are reported with why: refused by onehop (the service
// has no endpoints), or refused by the peer (nothing listens at the endpoint).
func TestTelemetryReportsFailedConnects(t *testing.T) {
	l, rd := telemetryLab(t, testOptions)
	const empty, dead = "10.96.50.2:80", "10.96.50.3:80"
	nobody := netip.MustParseAddrPort("127.0.0.10:9") // nothing listens: the kernel answers RST
	l.apply(service(empty, model.Random), service(dead, model.Random, []backend{{name: "dead", addr: nobody}}))
	for _, target := range []string{empty, dead} {
		if rs := l.connects(clientJob{Target: target, Count: 1}); len(rs) != 1 || !strings.Contains(rs[0].Err, "connection refused") {
			t.Fatalf("connect %s: %+v, want connection refused", target, rs)
		}
	}
	evs := readEvents(t, rd, 5*time.Second, func(evs []Event) bool { return len(evs) >= 2 })
	if e := evs[0]; e.Type != EventConnectFailed || !e.NoEndpoints || e.Err != syscall.ECONNREFUSED || e.VIP.String() != empty {
		t.Errorf("connect to a service without endpoints: %s", dumpEvents(evs[:1]))
	}
	if e := evs[1]; e.Type != EventConnectFailed || e.NoEndpoints || e.Err != syscall.ECONNREFUSED || e.VIP.String() != dead || e.Dst != nobody {
		t.Errorf("connect to an endpoint nobody listens at: %s", dumpEvents(evs[1:2]))
	}
	if extra := drainEvents(t, rd, 200*time.Millisecond); len(extra) > 0 {
		t.Errorf("failed connects also sent:\n%s", dumpEvents(extra))
	}
}

// A connection living longer than the report period is reported about once per period while
// it carries traffic, and not after it closes.
func TestTelemetryReportsLongConnectionsPeriodically(t *testing.T) {
	const period = 300 * time.Millisecond
	opts := testOptions
	opts.ReportPeriod = period
	l, rd := telemetryLab(t, opts)
	const vip = "10.96.50.4:80"
	l.echoService(vip)
	c := l.start(clientJob{Target: vip, Echo: true, Graceful: true})
	c.next(t)
	start := time.Now()
	for time.Since(start) < 2*time.Second {
		fmt.Fprintln(c.stdin, "ping")
		c.next(t)
		time.Sleep(20 * time.Millisecond)
	}
	c.wait(t)
	evs := readEvents(t, rd, 5*time.Second, closes(2))
	evs = append(evs, drainEvents(t, rd, 2*period)...)
	for _, dir := range []Direction{DirectionOutbound, DirectionInbound} {
		var reports []Event
		closed := false
		for _, e := range evs {
			switch {
			case e.Direction != dir:
			case e.Type == EventClose:
				closed = true
			case e.Type == EventReport && closed:
				t.Errorf("%s: a report after the close", dir)
			case e.Type == EventReport:
				reports = append(reports, e)
			}
		}
		// 2 s of traffic: 6 periods; an RTT sample must come after each period ends.
		if len(reports) < 4 || len(reports) > 7 {
			t.Errorf("%s: %d reports in 2s at a %v period:\n%s", dir, len(reports), period, dumpEvents(reports))
		}
		for i := 1; i < len(reports); i++ {
			gap := reports[i].Time.Sub(reports[i-1].Time)
			if gap < period || gap > 2*period {
				t.Errorf("%s: reports %v apart, want %v to %v", dir, gap, period, 2*period)
			}
			if reports[i].Total.BytesSent <= reports[i-1].Total.BytesSent || reports[i].Delta.BytesSent == 0 {
				t.Errorf("%s: report %d shows no new bytes: %+v", dir, i, reports[i].Total)
			}
		}
	}
}

// Without telemetry nothing is sent, connections are still tracked.
func TestTelemetryOffSendsNothing(t *testing.T) {
	l := newLab(t, testOptions)
	rd, err := l.dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	const vip = "10.96.50.5:80"
	srv := l.server("127.0.0.9")
	l.apply(service(vip, model.Random, []backend{{name: "srv", addr: srv}}), service("10.96.50.6:80", model.Random))
	l.echoOver(vip, 100)
	l.connects(clientJob{Target: "10.96.50.6:80", Count: 1})
	if evs := drainEvents(t, rd, 300*time.Millisecond); len(evs) > 0 {
		t.Errorf("telemetry off, yet:\n%s", dumpEvents(evs))
	}
	if cnt, _ := l.dp.Counters(); cnt["conns_opened"] != 2 || cnt["events_sent"] != 0 {
		t.Errorf("counters %v: want 2 connections (both sides) opened, no events", cnt)
	}
}

// Packets dropped on the path (an iptables statistic rule in the lab netns) show up as
// retransmits and lost packets, and the bytes are still counted exactly.
func TestTelemetryCountsRetransmitsAndLoss(t *testing.T) {
	l, rd := telemetryLab(t, testOptions)
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatalf("iptables: %v (make deps installs it)", err)
	}
	const vip = "10.96.50.7:80"
	srv := l.echoService(vip)
	// Only data segments to the server's port: the handshake and the close get through.
	rule := []string{"INPUT", "-p", "tcp", "--dport", fmt.Sprint(srv.Port()), "-m", "length", "--length", "1000:65535",
		"-m", "statistic", "--mode", "nth", "--every", "7", "--packet", "0", "-j", "DROP"}
	iptables := func(op string) error {
		var out []byte
		var err error
		l.netns.run(func() { out, err = exec.Command("iptables", append([]string{"-w", op}, rule...)...).CombinedOutput() })
		if err != nil {
			return fmt.Errorf("iptables %s in the test netns: %v: %s", op, err, out)
		}
		return nil
	}
	// Loopback's 64 KiB MTU makes each line one segment, whose loss a tail loss probe repairs
	// without marking anything lost; at 1500 bytes a line is 20 segments and SACK recovery runs.
	var out []byte
	var err error
	l.netns.run(func() { out, err = exec.Command("ip", "link", "set", "lo", "mtu", "1500").CombinedOutput() })
	if err != nil {
		t.Fatalf("ip link set lo mtu 1500 in the test netns: %v: %s", err, out)
	}
	if err := iptables("-A"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iptables("-D") })
	sizes := []int{30000, 30000, 30000}
	l.echoOver(vip, sizes...)
	evs := readEvents(t, rd, 10*time.Second, closes(2))
	for _, e := range evs {
		if e.Type != EventClose || e.Direction != DirectionOutbound {
			continue
		}
		if e.Total.BytesSent != 90000 || e.Total.BytesReceived != 90000 {
			t.Errorf("client close: %+v, want 90000 bytes each way", e.Total)
		}
		if e.Total.Retrans == 0 || e.Total.Lost == 0 {
			t.Errorf("client close: %d retransmits, %d lost; want both above 0 with every 7th data segment dropped", e.Total.Retrans, e.Total.Lost)
		}
		t.Logf("client: %d retransmits, %d lost, srtt %v, min rtt %v, %d segments out", e.Total.Retrans, e.Total.Lost, e.SRTT, e.MinRTT, e.Total.SegsOut)
	}
}

// When oh_events is full, events are lost and counted; the next event of a connection that
// arrives carries what the lost ones had (deltas, and the count as opened).
func TestTelemetryCountsLostEventsAndCarriesOver(t *testing.T) {
	opts := testOptions
	opts.EventBytes = os.Getpagesize() // about 20 events
	l, rd := telemetryLab(t, opts)
	const vip = "10.96.50.8:80"
	l.echoService(vip)
	// A long connection whose open event arrives; then a burst that fills the buffer.
	c := l.start(clientJob{Target: vip, Echo: true, Graceful: true})
	c.next(t)
	readEvents(t, rd, 5*time.Second, func(evs []Event) bool { return len(evs) >= 2 }) // both sides' open
	fmt.Fprintln(c.stdin, strings.Repeat("y", 5000))
	c.next(t)
	for range 40 {
		l.echoOver(vip, 10)
	}
	cnt, _ := l.dp.Counters()
	if cnt["events_lost"] == 0 {
		t.Fatalf("counters %v: want events_lost > 0 after a burst of 40 connections into a one-page buffer", cnt)
	}
	burst := drainEvents(t, rd, 200*time.Millisecond)
	c.wait(t)
	evs := readEvents(t, rd, 5*time.Second, func(evs []Event) bool {
		return countEvents(evs, func(e Event) bool { return e.Type == EventClose }) >= 2
	})
	for _, e := range evs {
		if e.Type == EventClose && e.Total.BytesSent == 5000 && (e.Delta.BytesSent != 5000 || e.First) {
			t.Errorf("the long connection's close carries %+v (first %v), want the 5000 bytes sent since its open event", e.Delta, e.First)
		}
	}
	// Of the burst's connections, each whose events arrived at all is counted opened once.
	opened := map[uint64]int{}
	for _, e := range burst {
		if e.First {
			opened[e.Cookie]++
		}
	}
	for cookie, n := range opened {
		if n != 1 {
			t.Errorf("socket %d counted opened %d times", cookie, n)
		}
	}
	t.Logf("burst: %d events read, %d lost; %d connections counted opened", len(burst), cnt["events_lost"], len(opened))
}

// A restarted agent (the datapath loaded again from its pins) reads on where the previous one
// stopped: a long connection's later events arrive, are not counted opened again, and its
// deltas read by both agents add up to the close's totals.
func TestTelemetryAcrossRestart(t *testing.T) {
	l := newPinnedLab(t, testOptions)
	rd := l.telemetryOn()
	const vip = "10.96.50.9:80"
	l.echoService(vip)
	c := l.start(clientJob{Target: vip, Echo: true, Graceful: true})
	c.next(t)
	fmt.Fprintln(c.stdin, strings.Repeat("a", 1234))
	c.next(t)
	before := readEvents(t, rd, 5*time.Second, func(evs []Event) bool { return len(evs) >= 2 })
	rd.Close()
	old := l.dp
	l.open(testOptions) // the next agent adopts the pinned maps and links, oh_events included
	old.Close()
	rd2, err := l.dp.Events()
	if err != nil {
		t.Fatal(err)
	}
	defer rd2.Close()
	fmt.Fprintln(c.stdin, strings.Repeat("b", 4321))
	c.next(t)
	c.wait(t)
	after := readEvents(t, rd2, 5*time.Second, closes(2))
	for _, dir := range []Direction{DirectionOutbound, DirectionInbound} {
		var sent uint64
		firsts := 0
		var last Event
		for _, e := range append(append([]Event{}, before...), after...) {
			if e.Direction != dir {
				continue
			}
			sent += e.Delta.BytesSent
			if e.First {
				firsts++
			}
			last = e
		}
		if last.Type != EventClose || last.Total.BytesSent != 5555 || sent != 5555 || firsts != 1 {
			t.Errorf("%s: last %s with %d bytes sent; deltas add to %d, %d first events; want close, 5555, 5555, 1\nbefore:\n%safter:\n%s",
				dir, last.Type, last.Total.BytesSent, sent, firsts, dumpEvents(before), dumpEvents(after))
		}
	}
}
