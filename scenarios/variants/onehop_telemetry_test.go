package variants

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/bench/prom"
	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
	"github.com/onehop-mesh/onehop/dataplane/agent"
)

// telemetryLab is a lab with one enrolled namespace "tel" (telemetry as mode says: "" for the
// agents' default, or a TelemetryLabel value): a client and a web server on n1, a web server on
// n2, service "web" over both, and service "empty" over nothing.
func telemetryLab(t *testing.T, xdsMode, mode string, agentArgs ...string) (*netns.Cluster, *Onehop, string) {
	t.Helper()
	bin, p, name := testProvider(t, "tt")
	web := map[string]string{"app": "web", "version": "v1"}
	labels := map[string]string{DataplaneModeLabel: "onehop"}
	if mode != "" {
		labels[TelemetryLabel] = mode
	}
	spec := clusters.Spec{Name: name, Namespaces: []clusters.Namespace{{Name: "tel", Labels: labels}},
		Pods: []clusters.PodSpec{
			{Name: "client", Namespace: "tel", Node: "n1", Labels: map[string]string{"app": "client"}},
			{Name: "web-1", Namespace: "tel", Node: "n1", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}},
			{Name: "web-2", Namespace: "tel", Node: "n2", Labels: web, Workload: &clusters.Workload{Kind: "fortio-server"}}},
		Services: []clusters.ServiceDef{
			{Name: "web", Namespace: "tel", Selector: map[string]string{"app": "web"}, Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}},
			{Name: "empty", Namespace: "tel", Selector: map[string]string{"app": "nobody"}, Ports: []clusters.ServicePort{{Name: "http", Port: 80, TargetPort: 8080}}}}}
	v := &Onehop{AgentBinary: bin + "-agent", XDSMode: xdsMode, AgentArgs: agentArgs}
	c, err := upAndInstall(t, p, spec, v)
	if err != nil {
		t.Fatal(err)
	}
	return c, v, bin
}

// scrape reads a node agent's /metrics with Prometheus's own text parser.
func scrape(t *testing.T, c *netns.Cluster, node string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := agent.Client(AgentSocket(c, node)).Get("http://agent/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("the metrics page of %s does not parse: %v", node, err)
	}
	return mfs
}

// sum adds the values of a family's series whose labels include want.
func sum(mfs map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	total := 0.0
	for _, m := range mfs[name].GetMetric() {
		if matches(m, want) {
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

func matches(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// series lists a family's series as label maps, for failure messages.
func series(mfs map[string]*dto.MetricFamily, name string) string {
	var b strings.Builder
	for _, m := range mfs[name].GetMetric() {
		fmt.Fprintf(&b, "  %v = %v\n", m.GetLabel(), m.GetCounter().GetValue()+m.GetGauge().GetValue())
	}
	return b.String()
}

// eventually polls cond every 100ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(100 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// Connections made by a pod are counted with Istio's metric names and labels on both sides
// (reporter source on the client's node, destination on each server's), the bytes one side sent
// are the bytes the other received, a connect to a service without endpoints is counted failed,
// and a real Prometheus scraping the agents sees the same counts.
func TestOnehopTelemetryIstioMetrics(t *testing.T) {
	for _, mode := range []string{"envoy", "workload"} {
		t.Run(mode, func(t *testing.T) { testTelemetryIstioMetrics(t, mode) })
	}
}

func testTelemetryIstioMetrics(t *testing.T, xdsMode string) {
	c, _, _ := telemetryLab(t, xdsMode, "")
	vip := serviceIP(t, c, "tel", "web")
	const n = 12
	for i := 0; i < n; i++ {
		if status, _ := get(t, c, "client", "http://"+vip+"/echo?size=2000"); status != "200" {
			t.Fatalf("request %d: status %q", i, status)
		}
	}
	source := map[string]string{"reporter": "source", "source_workload": "client", "source_workload_namespace": "tel",
		"source_app": "client", "source_cluster": "Kubernetes", "destination_service": "web.tel.svc.cluster.local",
		"destination_service_name": "web", "destination_service_namespace": "tel", "request_protocol": "tcp",
		"response_flags": "-", "connection_security_policy": "unknown", "source_principal": "unknown"}
	var n1 map[string]*dto.MetricFamily
	if !eventually(5*time.Second, func() bool {
		n1 = scrape(t, c, "n1")
		return sum(n1, "istio_tcp_connections_closed_total", source) == n
	}) {
		t.Fatalf("n1: want %d connections opened and closed with %v:\n%s", n, source, series(n1, "istio_tcp_connections_closed_total"))
	}
	if got := sum(n1, "istio_tcp_connections_opened_total", source); got != n {
		t.Errorf("n1: %v connections opened, want %d:\n%s", got, n, series(n1, "istio_tcp_connections_opened_total"))
	}
	// The server on the client's node is known by its enrollment; the one on n2 in workload mode
	// by the workload API, in envoy mode not at all (istiod tells a sidecar no peer workloads).
	local := sum(n1, "istio_tcp_connections_opened_total", with(source, "destination_workload", "web-1", "destination_app", "web", "destination_version", "v1"))
	remote := sum(n1, "istio_tcp_connections_opened_total", with(source, "destination_workload", "web-2"))
	if xdsMode == "envoy" {
		remote = sum(n1, "istio_tcp_connections_opened_total", with(source, "destination_workload", "unknown"))
	}
	if local == 0 || remote == 0 || local+remote != n {
		t.Errorf("n1: %v connections to web-1 and %v to web-2 (of %d):\n%s", local, remote, n, series(n1, "istio_tcp_connections_opened_total"))
	}
	n2 := scrape(t, c, "n2")
	dest := map[string]string{"reporter": "destination", "destination_service_name": "web", "destination_service_namespace": "tel",
		"connection_security_policy": "none"}
	inLocal := sum(n1, "istio_tcp_connections_closed_total", with(dest, "destination_workload", "web-1", "source_workload", "client"))
	inRemote := sum(n2, "istio_tcp_connections_closed_total", with(dest, "destination_workload", "web-2"))
	if inLocal != local || inRemote != remote {
		t.Errorf("servers counted %v (web-1) and %v (web-2) connections; clients %v and %v:\n%s%s", inLocal, inRemote, local, remote,
			series(n1, "istio_tcp_connections_closed_total"), series(n2, "istio_tcp_connections_closed_total"))
	}
	sent := sum(n1, "istio_tcp_sent_bytes_total", source)
	recv := sum(n1, "istio_tcp_received_bytes_total", source)
	srvRecv := sum(n1, "istio_tcp_received_bytes_total", dest) + sum(n2, "istio_tcp_received_bytes_total", dest)
	srvSent := sum(n1, "istio_tcp_sent_bytes_total", dest) + sum(n2, "istio_tcp_sent_bytes_total", dest)
	if sent == 0 || recv < n*2000 || sent != srvRecv || recv != srvSent {
		t.Errorf("client sent %v, received %v bytes; servers received %v, sent %v: each side must count what the other did", sent, recv, srvRecv, srvSent)
	}

	// A service with no endpoints: the connect is refused in the kernel, and counted.
	emptyVIP := serviceIP(t, c, "tel", "empty")
	if status, _ := get(t, c, "client", "http://"+emptyVIP+"/"); status != "000" {
		t.Fatalf("request to a service without endpoints: status %q", status)
	}
	failed := map[string]string{"reporter": "source", "source_workload": "client", "destination_service_name": "empty",
		"reason": "no_endpoints", "response_flags": "UH"}
	if !eventually(3*time.Second, func() bool { return sum(scrape(t, c, "n1"), "onehop_tcp_connections_failed_total", failed) == 1 }) {
		t.Errorf("a refused connect is not counted failed with %v:\n%s", failed, series(scrape(t, c, "n1"), "onehop_tcp_connections_failed_total"))
	}

	// A real Prometheus, in n1's network namespace, scraping both nodes' agents.
	var targets []prom.Target
	for _, node := range []string{"n1", "n2"} {
		targets = append(targets, prom.Target{Job: "onehop-agent", Address: netip.AddrPortFrom(c.NodeAddresses(node)[0], 15020).String(),
			Labels: map[string]string{"node": node}})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ps, err := prom.Start(ctx, prom.Options{Dir: t.TempDir(), Targets: targets, ScrapeInterval: time.Second, Netns: c.NodeNetnsPath("n1")})
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close()
	if err := ps.WaitScraped(ctx, "onehop-agent", 0); err != nil {
		t.Fatal(err)
	}
	var got []prom.Sample
	query := `sum by (reporter) (istio_tcp_connections_opened_total{destination_service="web.tel.svc.cluster.local"})`
	if !eventually(10*time.Second, func() bool {
		got, err = ps.Query(ctx, query, time.Now())
		return err == nil && len(got) == 2 && got[0].Value == n && got[1].Value == n
	}) {
		t.Errorf("Prometheus: %s = %+v (%v), want %d for each reporter", query, got, err, n)
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// accessLine is the part of an access log line the test reads.
type accessLine struct {
	Event         string `json:"event"`
	Direction     string `json:"direction"`
	Src           string `json:"src"`
	Dst           string `json:"dst"`
	SrcWorkload   string `json:"src_workload"`
	Service       string `json:"service"`
	BytesSent     uint64 `json:"bytes_sent"`
	BytesReceived uint64 `json:"bytes_received"`
	Cookie        uint64 `json:"cookie"`
}

func readAccessLog(t *testing.T, path string) []accessLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []accessLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l accessLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("access log line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// A connection living longer than --long-connection gets series of its own whose byte counts
// grow while it lives; its node's agent is SIGKILLed and restarted meanwhile: the access log
// shows the connection opened once and closed once, with its reports on both sides of the
// restart, the restarted agent counts its close but not its open again, and the client's bytes
// at close are the server's.
func TestOnehopTelemetryLongConnectionAcrossRestart(t *testing.T) {
	c, v, bin := telemetryLab(t, "", "access-log", "--telemetry-period", "300ms", "--long-connection", "1s")
	url := "http://" + serviceIP(t, c, "tel", "web") + "/echo?size=1000"
	d := &loadgen.Driver{Cluster: c, ClientPod: "client", Binary: bin}
	done := make(chan error, 1)
	go func() {
		_, err := d.Run(context.Background(), loadgen.Options{URL: url, QPS: 50, Connections: 1, Duration: 6 * time.Second,
			KeepAlive: true, Resolution: time.Millisecond}, nopWindow{})
		done <- err
	}()
	long := map[string]string{"reporter": "source", "source_workload": "client", "destination_service": "web.tel.svc.cluster.local"}
	var first float64
	if !eventually(4*time.Second, func() bool {
		first = sum(scrape(t, c, "n1"), "onehop_tcp_connection_sent_bytes_total", long)
		return first > 0
	}) {
		t.Fatalf("no per-connection series for the long connection:\n%s", series(scrape(t, c, "n1"), "onehop_tcp_connection_sent_bytes_total"))
	}
	if !eventually(3*time.Second, func() bool { return sum(scrape(t, c, "n1"), "onehop_tcp_connection_sent_bytes_total", long) > first }) {
		t.Errorf("the long connection's sent bytes stay at %v", first)
	}
	if _, err := v.Restart(context.Background(), c, "n1", syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	source := map[string]string{"reporter": "source", "source_workload": "client"}
	var n1 map[string]*dto.MetricFamily
	if !eventually(5*time.Second, func() bool {
		n1 = scrape(t, c, "n1")
		return sum(n1, "istio_tcp_connections_closed_total", source) >= 1
	}) {
		t.Fatalf("the restarted agent did not count the close:\n%s", series(n1, "istio_tcp_connections_closed_total"))
	}
	if opened := sum(n1, "istio_tcp_connections_opened_total", source); opened != 0 {
		t.Errorf("the restarted agent counted %v connections opened; the only one was opened before it started", opened)
	}
	if s := sum(n1, "onehop_tcp_connection_sent_bytes_total", long); s != 0 {
		t.Errorf("the closed connection still has its own series (%v bytes)", s)
	}

	// The agents write their access log out every second: wait for the close lines.
	byCookie := map[uint64][]accessLine{}
	eventually(3*time.Second, func() bool {
		clear(byCookie)
		closed := false
		for _, l := range readAccessLog(t, AgentAccessLog(c, "n1")) {
			if l.Direction == "outbound" && l.SrcWorkload == "client" {
				byCookie[l.Cookie] = append(byCookie[l.Cookie], l)
				closed = closed || l.Event == "close"
			}
		}
		return closed
	})
	time.Sleep(1100 * time.Millisecond) // and the server side's, on n1 or n2
	if len(byCookie) != 1 {
		t.Fatalf("access log: %d client connections, want the one long one: %+v", len(byCookie), byCookie)
	}
	for _, ls := range byCookie {
		opens, closes, reports := 0, 0, 0
		for _, l := range ls {
			switch l.Event {
			case "open":
				opens++
			case "close":
				closes++
			case "report":
				reports++
			}
		}
		last := ls[len(ls)-1]
		// 6 s at a 300 ms period, less what the killed agent had not written out (1 s at most).
		if opens != 1 || closes != 1 || reports < 10 || last.Event != "close" {
			t.Errorf("access log of the long connection: %d open, %d report, %d close lines (last %s); want 1, >= 10, 1", opens, reports, closes, last.Event)
		}
		// Its server side: on n1 (web-1) or n2 (web-2), with the same addresses reversed.
		var server *accessLine
		for _, node := range []string{"n1", "n2"} {
			for _, l := range readAccessLog(t, AgentAccessLog(c, node)) {
				if l.Direction == "inbound" && l.Event == "close" && l.Src == last.Dst && l.Dst == last.Src {
					server = &l
				}
			}
		}
		if server == nil || server.BytesReceived != last.BytesSent || server.BytesSent != last.BytesReceived {
			t.Errorf("client closed with %d bytes sent, %d received; its server's close: %+v", last.BytesSent, last.BytesReceived, server)
		}
	}
}

type nopWindow struct{}

func (nopWindow) Start() error { return nil }
func (nopWindow) Stop() error  { return nil }
