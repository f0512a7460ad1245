package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/onehop-mesh/onehop/dataplane/model"
)

// benchOptions hold 10,000 services of 10 endpoints with room for changes.
var benchOptions = Options{MaxServices: 16384, MaxSlots: 262144, MaxConns: 65536, MaxNetns: 16}

// benchServices returns n services 10.96.x.y:80 with eps endpoints each (10.244.x.y:8080,
// never connected to); variant shifts every endpoint list, so each service changes.
func benchServices(n, eps, variant int) []model.Service {
	out := make([]model.Service, n)
	for i := range out {
		s := svc(fmt.Sprintf("10.96.%d.%d:80", 100+i/250, i%250+1), model.Random, make([]model.Endpoint, eps))
		for j := range s.Priorities[0] {
			a := i*eps + j + variant
			s.Priorities[0][j] = model.Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 244, byte(a >> 8), byte(a)}), 8080), Weight: 1}
		}
		out[i] = s
	}
	return out
}

// BenchmarkApplyFullPush: 10,000 services x 10 endpoints into empty maps.
func BenchmarkApplyFullPush(b *testing.B) {
	p := loadDatapath(b, benchOptions).Programmer
	full, empty := config(benchServices(10000, 10, 0)...), config()
	for range b.N {
		b.StopTimer()
		if _, err := p.Apply(empty); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		st, err := p.Apply(full)
		if err != nil || st.ServicesAdded != 10000 {
			b.Fatalf("Apply = %+v, %v", st, err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/push")
}

// BenchmarkApplyOneEndpointChange: one service's endpoints change in a 10,000-service config.
func BenchmarkApplyOneEndpointChange(b *testing.B) {
	p := loadDatapath(b, benchOptions).Programmer
	services := benchServices(10000, 10, 0)
	cfg := config(services...)
	if _, err := p.Apply(cfg); err != nil {
		b.Fatal(err)
	}
	variants := [2]model.Service{services[5000], benchServices(5001, 10, 1)[5000]}
	b.ResetTimer()
	for i := range b.N {
		cfg.Services[variants[0].Key] = variants[(i+1)%2]
		st, err := p.Apply(cfg)
		if err != nil || st.ServicesChanged != 1 {
			b.Fatalf("Apply = %+v, %v", st, err)
		}
	}
}

// tenBackends starts backends on 127.0.0.2 to 127.0.0.11.
func (l *lab) tenBackends() []backend {
	var addrs []string
	for i := range 10 {
		addrs = append(addrs, fmt.Sprintf("127.0.0.%d", i+2))
	}
	return l.backends(addrs...)
}

// BenchmarkConnectVIP: connect()+close() from a child in the attached cgroup, through a VIP of
// 10 loopback endpoints, with only that service in the maps or among 100,000 endpoints
// (10,000 services); "direct" connects to an endpoint without a VIP (the programs still run).
func BenchmarkConnectVIP(b *testing.B) {
	l := newLab(b, benchOptions)
	bs := l.tenBackends()
	vip := service("10.96.200.1:80", model.Random, bs)
	for _, bc := range []struct {
		name     string
		services []model.Service
		target   string
	}{
		{"endpoints=10", []model.Service{vip}, "10.96.200.1:80"},
		{"endpoints=100000", append(benchServices(9999, 10, 0), vip), "10.96.200.1:80"},
		{"direct", []model.Service{vip}, bs[0].addr.String()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := l.with(b)
			l.apply(bc.services...)
			c := l.start(clientJob{Target: bc.target, Bench: true})
			b.ResetTimer()
			fmt.Fprintf(c.stdin, "%d\n", b.N)
			r, ok := c.next(b)
			b.StopTimer()
			if !ok || r.Err != "" {
				b.Fatalf("bench client: %+v; stderr %s", r, c.stderr.String())
			}
			b.ReportMetric(float64(r.Elapsed)/float64(b.N), "ns/connect")
			c.wait(b)
		})
	}
}

// BenchmarkConnectTelemetry: what telemetry adds to a new connection through a VIP. One child
// connects while the lab netns is enrolled with telemetry off and on in alternate batches (the
// order flips each round, so drift hits both alike), and a reader drains oh_events as the agent
// does (the events are discarded). "connect" is connect()+close() to loopback backends that
// write their name; "echo" adds a 64-byte request and its echo, to a server in the lab cgroup
// (so both sides of each connection are tracked). It reports ns/connect for each setting, their
// ratio (on/off), and the events telemetry sent per connection.
func BenchmarkConnectTelemetry(b *testing.B) {
	l := newLab(b, benchOptions)
	bs := l.tenBackends()
	echo := l.server("127.0.0.20")
	rd, err := l.dp.Events()
	if err != nil {
		b.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			if _, err := rd.Read(); errors.Is(err, ErrClosed) {
				return
			}
		}
	}()
	b.Cleanup(func() {
		rd.Close()
		<-drained
	})
	for _, bc := range []struct {
		name    string
		svc     model.Service
		request int
	}{
		{"connect", service("10.96.201.1:80", model.Random, bs), 0},
		{"echo", service("10.96.201.2:80", model.Random, []backend{{name: "echo", addr: echo}}), 64},
	} {
		b.Run(bc.name, func(b *testing.B) {
			l := l.with(b)
			l.apply(bc.svc)
			c := l.start(clientJob{Target: netip.AddrPortFrom(bc.svc.Key.VIP, bc.svc.Key.Port).String(), Bench: true, Request: bc.request})
			type setting struct {
				name   string
				opts   NetnsOptions
				conns  int
				ns     int64
				events uint64
			}
			settings := []*setting{{name: "off"}, {name: "on", opts: NetnsOptions{Telemetry: true}}}
			counters := func() map[string]uint64 {
				cnt, err := l.dp.Counters()
				if err != nil {
					b.Fatal(err)
				}
				return cnt
			}
			// batch connections per setting and round: short enough for many rounds in a brief run.
			const batch = 250
			lostBefore := counters()["events_lost"]
			b.ResetTimer()
			for round, left := 0, b.N; left > 0; round++ {
				n := min(batch, (left+1)/2)
				order := settings
				if round%2 == 1 {
					order = []*setting{settings[1], settings[0]}
				}
				for _, s := range order {
					k := min(n, left)
					if k == 0 {
						break
					}
					b.StopTimer()
					if err := l.dp.Enrollment.Enroll(l.cookie, s.opts); err != nil {
						b.Fatal(err)
					}
					sent := counters()["events_sent"]
					b.StartTimer()
					fmt.Fprintf(c.stdin, "%d\n", k)
					r, ok := c.next(b)
					b.StopTimer()
					if !ok || r.Err != "" {
						b.Fatalf("bench client (telemetry %s): %+v; stderr %s", s.name, r, c.stderr.String())
					}
					s.conns, s.ns, left = s.conns+k, s.ns+r.Elapsed, left-k
					s.events += counters()["events_sent"] - sent
					b.StartTimer()
				}
			}
			b.StopTimer()
			if err := l.dp.Enrollment.Enroll(l.cookie, l.netnsOptions); err != nil {
				b.Fatal(err)
			}
			off, on := settings[0], settings[1]
			if off.events > 0 {
				b.Errorf("telemetry off, yet %d events sent", off.events)
			}
			if lost := counters()["events_lost"] - lostBefore; lost > 0 {
				b.Errorf("%d events lost: the reader did not keep up, so telemetry on did less than it should", lost)
			}
			for _, s := range settings {
				if s.conns > 0 {
					b.ReportMetric(float64(s.ns)/float64(s.conns), "ns/connect-"+s.name)
				}
			}
			if off.conns > 0 && on.conns > 0 {
				b.ReportMetric((float64(on.ns)/float64(on.conns))/(float64(off.ns)/float64(off.conns)), "telemetry-ratio")
				b.ReportMetric(float64(on.events)/float64(on.conns), "events/connect-on")
			}
			c.wait(b)
		})
	}
}
