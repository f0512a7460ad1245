package loadgen

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/onehop-mesh/onehop/bench"
)

// echoServer serves on loopback; every closeEvery-th request (0: never) closes its connection,
// the way a restarted proxy would.
func echoServer(t *testing.T, closeEvery int64) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if closeEvery > 0 && n.Add(1)%closeEvery == 0 {
			w.Header().Set("Connection", "close")
		}
		io.Copy(w, r.Body)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return "http://" + l.Addr().String() + "/echo"
}

// load runs Load and returns its event names and the summaries of the measured run and the warm-up.
func load(t *testing.T, o Options) ([]string, bench.Latency, bench.Latency) {
	t.Helper()
	var out bytes.Buffer
	if err := Load(o, &out); err != nil {
		t.Fatal(err)
	}
	var events []string
	var lat, warm bench.Latency
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("bad event line %q: %v", sc.Text(), err)
		}
		events = append(events, e.Event)
		var err error
		switch e.Event {
		case "result":
			lat, err = bench.Summarize(e.Fortio)
		case "warmup":
			warm, err = bench.Summarize(e.Fortio)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return events, lat, warm
}

func baseOptions(url string) Options {
	return Options{URL: url, QPS: 200, Connections: 2, Duration: 700 * time.Millisecond, Warmup: 200 * time.Millisecond,
		KeepAlive: true, PayloadBytes: 1024, Resolution: 10 * time.Microsecond, CatchUp: true, Uniform: true, Timeout: 2 * time.Second}
}

func TestLoadMarksWindowAndKeepsFortioResult(t *testing.T) {
	events, lat, warm := load(t, baseOptions(echoServer(t, 0)))
	if want := "warmup measure-start measure-end result"; strings.Join(events, " ") != want {
		t.Fatalf("events %q, want %q", strings.Join(events, " "), want)
	}
	// The warm-up's counts (40 requests at 200 QPS over 200 ms, on its own 2 sockets), without
	// its histogram.
	if warm.Requests < 30 || warm.Sockets != 2 || warm.RespBytes <= 0 || len(warm.Percentiles) != 0 {
		t.Errorf("warm-up summary %+v", warm)
	}
	run := bench.Run{Mode: "fixed-qps", RequestedQPS: 200, Duration: 700 * time.Millisecond, Connections: 2, KeepAlive: true, Latency: lat}
	run.Check(bench.Limits{MinQPSRatio: 0.9})
	if !run.Valid || lat.Sockets != 2 || lat.Errors != 0 {
		t.Errorf("healthy run: valid=%v %v sockets=%d errors=%d", run.Valid, run.Invalid, lat.Sockets, lat.Errors)
	}
	// 10 us resolution: sub-millisecond percentiles must not collapse onto 1 ms buckets.
	if p50 := lat.Percentiles["p50"]; p50 <= 0 || p50 >= 1000 {
		t.Errorf("p50 %.1f us on loopback, want a sub-millisecond figure", p50)
	}
}

// fortio reconnects a keep-alive socket the server closed without reporting an error: only the
// socket count shows it, and the run must be flagged.
func TestBrokenKeepAliveConnectionIsFlagged(t *testing.T) {
	_, lat, _ := load(t, baseOptions(echoServer(t, 20)))
	run := bench.Run{Mode: "fixed-qps", RequestedQPS: 200, Duration: 700 * time.Millisecond, Connections: 2, KeepAlive: true, Latency: lat}
	run.Check(bench.Limits{MinQPSRatio: 0.9})
	if lat.Errors != 0 {
		t.Logf("fortio counted %d errors", lat.Errors)
	}
	if run.Valid || lat.Sockets <= 2 {
		t.Errorf("server closed connections yet run is valid=%v with %d sockets: %v", run.Valid, lat.Sockets, run.Invalid)
	}
}

// A closed loop cannot exceed what one connection does in series: asking far more is flagged.
func TestUnreachableQPSIsFlagged(t *testing.T) {
	url := echoServer(t, 0)
	o := baseOptions(url)
	o.QPS, o.Connections = 200000, 1
	_, lat, _ := load(t, o)
	run := bench.Run{Mode: "fixed-qps", RequestedQPS: o.QPS, Duration: o.Duration, Connections: 1, KeepAlive: true, Latency: lat}
	run.Check(bench.Limits{MinQPSRatio: 0.95})
	if run.Valid {
		t.Errorf("run at %.0f of %.0f requested QPS was accepted", lat.ActualQPS, o.QPS)
	}
}
