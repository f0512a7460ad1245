// Package loadgen drives HTTP load with fortio (used as a library: its periodic runner and fast
// HTTP client, its echo server). The workload half runs inside pods (`onehop workload ...`); the
// driver half starts it in the client pod, marks the measured window for CPU samplers and
// collects fortio's full result.
package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"fortio.org/fortio/fhttp"
	"fortio.org/fortio/periodic"
	"fortio.org/log"
)

// StdinEOFStops is the `onehop workload` flag that makes the end of standard input stop a
// process as SIGTERM would: where a signal cannot reach it (kubectl exec, clusters/kube).
const StdinEOFStops = "stdin-eof-stops"

// EchoPath is the path the load requests; the server counts requests to it.
const EchoPath = "/echo"

// StatsPort is where a server pod answers, on 127.0.0.1 only, how many requests reached it
// (GET /requests): the lab checks after each run that its requests reached its own variant's
// servers and nobody else's, since every fortio server would answer a misrouted request alike.
const StatsPort = 15990

// ServerStats is what GET /requests on StatsPort returns.
type ServerStats struct {
	Echo int64 `json:"echo"` // requests to EchoPath since the server started
}

// Serve runs fortio's echo server on port until SIGTERM or SIGINT, counting its requests.
func Serve(port int) error { return ServeStats(port, "127.0.0.1") }

// ServeStats is Serve with the request count served on statsHost:StatsPort.
func ServeStats(port int, statsHost string) error {
	log.SetLogLevel(log.Warning)
	mux, addr := fhttp.ServeTCP(strconv.Itoa(port), "")
	if addr == nil {
		return fmt.Errorf("fortio server: cannot listen on port %d", port)
	}
	var echo atomic.Int64
	mux.HandleFunc(EchoPath, func(w http.ResponseWriter, r *http.Request) {
		echo.Add(1)
		fhttp.EchoHandler(w, r)
	})
	stats, statsAddr := fhttp.HTTPServer("stats", net.JoinHostPort(statsHost, strconv.Itoa(StatsPort)))
	if statsAddr == nil {
		return fmt.Errorf("fortio server: cannot listen on %s:%d for its request count", statsHost, StatsPort)
	}
	stats.HandleFunc("/requests", func(w http.ResponseWriter, _ *http.Request) {
		json.NewEncoder(w).Encode(ServerStats{Echo: echo.Load()})
	})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

// Options is one load run as the workload process receives it (JSON on its command line).
type Options struct {
	URL          string        `json:"url"`
	QPS          float64       `json:"qps"` // <= 0: as fast as possible (max-qps)
	Connections  int           `json:"connections"`
	Duration     time.Duration `json:"duration"`
	Warmup       time.Duration `json:"warmup"`
	KeepAlive    bool          `json:"keepalive"`
	PayloadBytes int           `json:"payload_bytes"`
	// Resolution is the histogram bucket width; fortio's default of 1 ms hides sub-ms latency.
	Resolution time.Duration `json:"resolution"`
	// CatchUp lets fortio send late requests sooner to hold the requested QPS (its default).
	CatchUp bool          `json:"catchup"`
	Uniform bool          `json:"uniform"`
	Timeout time.Duration `json:"timeout"`
}

// Event is one line the workload writes on stdout.
type Event struct {
	Event  string          `json:"event"` // warmup (its result, without histograms), measure-start, measure-end, result, error
	Fortio json.RawMessage `json:"fortio,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// Percentiles fortio computes from its histogram.
var Percentiles = []float64{50, 75, 90, 99, 99.9}

// Load runs the warm-up (discarded) and the measured run, writing events to out. Fortio's own
// log goes to stderr.
func Load(o Options, out io.Writer) error {
	log.SetLogLevel(log.Warning)
	enc := json.NewEncoder(out)
	emit := func(e Event) {
		if err := enc.Encode(e); err != nil {
			fmt.Fprintln(os.Stderr, "write event:", err)
		}
	}
	if o.Warmup > 0 {
		w := o
		w.Duration = o.Warmup
		res, err := fhttp.RunHTTPTest(runnerOptions(w))
		if err != nil {
			emit(Event{Event: "error", Error: "warm-up: " + err.Error()})
			return err
		}
		// Its counts only (connections, requests, bytes): what the data plane carried besides the
		// measured run, for checks against the data plane's own telemetry.
		res.DurationHistogram.Data, res.DurationHistogram.Percentiles = nil, nil
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		emit(Event{Event: "warmup", Fortio: b})
	}
	emit(Event{Event: "measure-start"})
	res, err := fhttp.RunHTTPTest(runnerOptions(o))
	emit(Event{Event: "measure-end"})
	if err != nil {
		emit(Event{Event: "error", Error: err.Error()})
		return err
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	emit(Event{Event: "result", Fortio: b})
	return nil
}

func runnerOptions(o Options) *fhttp.HTTPRunnerOptions {
	ro := &fhttp.HTTPRunnerOptions{}
	ro.RunnerOptions = periodic.RunnerOptions{
		QPS:         o.QPS,
		Duration:    o.Duration,
		NumThreads:  o.Connections,
		Percentiles: Percentiles,
		Resolution:  o.Resolution.Seconds(),
		Uniform:     o.Uniform,
		NoCatchUp:   !o.CatchUp,
		Out:         io.Discard,
	}
	if o.QPS <= 0 {
		ro.QPS = -1 // fortio's "max" mode
	}
	ro.HTTPOptions.URL = o.URL
	ro.HTTPOptions.DisableKeepAlive = !o.KeepAlive
	ro.HTTPOptions.HTTPReqTimeOut = o.Timeout
	if o.PayloadBytes > 0 {
		ro.HTTPOptions.Payload = make([]byte, o.PayloadBytes) // POSTed; the echo server returns it
		for i := range ro.HTTPOptions.Payload {
			ro.HTTPOptions.Payload[i] = 'a' + byte(i%26)
		}
	}
	ro.HTTPOptions.Init(o.URL)
	return ro
}
