package scenarios

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/onehop-mesh/onehop/bench"
	"github.com/onehop-mesh/onehop/bench/prom"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/scenarios/variants"
)

// promJob is the scrape job of the node agents.
const promJob = "onehop-agent"

// nodeNetns is a cluster whose nodes are network namespaces of this host (the netns lab).
type nodeNetns interface {
	NodeNetnsPath(node string) string
}

// startPrometheus starts a real Prometheus in the first node's network namespace scraping every
// node agent of the scenario's variants, if any has agents and the cluster's nodes are local;
// nil otherwise. The caller closes it.
func (r *Runner) startPrometheus(ctx context.Context, c clusters.Cluster, s *Scenario, deps deployed) (*prom.Server, error) {
	nn, ok := c.(nodeNetns)
	h, isHost := c.(clusters.NodeHost)
	if !ok || !isHost {
		return nil, nil
	}
	seen := map[string]bool{}
	var targets []prom.Target
	for _, name := range s.Variants {
		ms, ok := deps[name].(variants.MetricsSource)
		if !ok {
			continue
		}
		for _, addr := range ms.MetricsTargets(c) {
			if !seen[addr] {
				seen[addr] = true
				targets = append(targets, prom.Target{Job: promJob, Address: addr})
			}
		}
	}
	if len(targets) == 0 {
		return nil, nil
	}
	dir := filepath.Join(h.RuntimeDir(), "prometheus") // goes with the lab
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ps, err := prom.Start(ctx, prom.Options{Dir: dir, Targets: targets, ScrapeInterval: time.Second,
		Netns: nn.NodeNetnsPath(c.Spec().NodeNames()[0])})
	if err != nil {
		return nil, fmt.Errorf("prometheus for the agents' metrics: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := ps.WaitScraped(wctx, promJob, 0); err != nil {
		ps.Close()
		return nil, err
	}
	r.say("   prometheus scraping %d node agents every 1s (%s)", len(targets), ps.Addr())
	return ps, nil
}

// telemetryView reads per destination service what the agents counted (PromQL over the whole
// scenario) and compares it with fortio's counts of the same traffic: connections opened and
// closed by the client side equal the connections fortio made (warm-ups included); where both
// ends are enrolled, each side's bytes sent are the other's received; the client side received
// the response bytes fortio read; a variant without telemetry has no series at all.
func telemetryView(ctx context.Context, ps *prom.Server, s *Scenario, deps deployed, res *bench.Result) (*bench.TelemetryView, error) {
	type key struct{ variant, placement string }
	fortio := map[key]*bench.ServiceTelemetry{}
	var order []key
	for _, run := range res.Runs {
		k := key{run.Variant, run.Placement}
		st := fortio[k]
		if st == nil {
			ms, ok := deps[run.Variant].(variants.MetricsSource)
			if !ok {
				continue
			}
			st = &bench.ServiceTelemetry{Variant: run.Variant, Service: run.Variant + "/fortio-" + run.Placement, TelemetryOn: ms.TelemetryOn()}
			fortio[k] = st
			order = append(order, k)
		}
		for _, l := range []*bench.Latency{&run.Latency, run.Warmup} {
			if l == nil || l.Requests == 0 {
				continue
			}
			// Before it measures, fortio makes one request per connection (checking the URL)
			// that its counts leave out, though its sockets count; the data plane carries it.
			// Responses are all alike: each of those is the size of the average one.
			st.FortioConnections += l.Sockets
			st.FortioRequests += l.Requests + int64(run.Connections)
			st.FortioResponseBytes += l.RespBytes + int64(run.Connections)*int64(math.Round(float64(l.RespBytes)/float64(l.Requests)))
		}
	}
	view := &bench.TelemetryView{Prometheus: promVersion() + fmt.Sprintf(", scraping the node agents every 1s (job %s)", promJob), Agree: true}
	// The last connections close, and their events are scraped, a moment after the last run.
	deadline := time.Now().Add(20 * time.Second)
	for {
		settled := true
		for _, k := range order {
			st := fortio[k]
			if err := fillTelemetry(ctx, ps, st, k.variant, "fortio-"+k.placement); err != nil {
				return nil, err
			}
			if st.TelemetryOn && (st.SourceOpened != st.SourceClosed || st.SourceOpened < float64(st.FortioConnections)) {
				settled = false
			}
		}
		if settled || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	for _, k := range order {
		st := fortio[k]
		checkTelemetry(st)
		if len(st.Disagreements) > 0 {
			view.Agree = false
		}
		view.Services = append(view.Services, *st)
	}
	return view, nil
}

// fillTelemetry reads one service's counts from Prometheus.
func fillTelemetry(ctx context.Context, ps *prom.Server, st *bench.ServiceTelemetry, ns, name string) error {
	sel := fmt.Sprintf(`destination_service_namespace=%q,destination_service_name=%q`, ns, name)
	for _, q := range []struct {
		metric   string
		src, dst *float64
	}{
		{"istio_tcp_connections_opened_total", &st.SourceOpened, &st.DestOpened},
		{"istio_tcp_connections_closed_total", &st.SourceClosed, &st.DestClosed},
		{"istio_tcp_sent_bytes_total", &st.SourceSentBytes, &st.DestSentBytes},
		{"istio_tcp_received_bytes_total", &st.SourceReceivedBytes, &st.DestReceivedBytes},
	} {
		samples, err := ps.Query(ctx, fmt.Sprintf("sum by (reporter) (%s{%s})", q.metric, sel), time.Time{})
		if err != nil {
			return fmt.Errorf("PromQL for %s/%s: %w", ns, name, err)
		}
		*q.src, *q.dst = 0, 0
		for _, smp := range samples {
			switch smp.Labels["reporter"] {
			case "source":
				*q.src = smp.Value
			case "destination":
				*q.dst = smp.Value
			}
		}
	}
	return nil
}

// checkTelemetry fills st.Disagreements.
func checkTelemetry(st *bench.ServiceTelemetry) {
	var d []string
	differ := func(what string, got, want float64) {
		if got != want {
			d = append(d, fmt.Sprintf("%s: %.0f, want %.0f", what, got, want))
		}
	}
	if !st.TelemetryOn {
		for _, v := range []float64{st.SourceOpened, st.SourceClosed, st.DestOpened, st.DestClosed, st.SourceSentBytes, st.DestSentBytes} {
			if v != 0 {
				st.Disagreements = []string{"telemetry is off for this variant's pods, yet it has series"}
				return
			}
		}
		return
	}
	differ("connections opened (client side) vs fortio's connections", st.SourceOpened, float64(st.FortioConnections))
	differ("connections closed (client side) vs opened", st.SourceClosed, st.SourceOpened)
	differ("response bytes received (client side) vs fortio's", st.SourceReceivedBytes, float64(st.FortioResponseBytes))
	// Every pod of the namespace is enrolled, servers too: their side counts the same.
	differ("connections opened (server side) vs client side", st.DestOpened, st.SourceOpened)
	differ("bytes received (server side) vs sent (client side)", st.DestReceivedBytes, st.SourceSentBytes)
	differ("bytes sent (server side) vs received (client side)", st.DestSentBytes, st.SourceReceivedBytes)
	st.Disagreements = d
}

// promVersion names the Prometheus binary that ran.
func promVersion() string {
	out, err := exec.Command("prometheus", "--version").CombinedOutput()
	if err != nil {
		return "prometheus"
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(first)
}
