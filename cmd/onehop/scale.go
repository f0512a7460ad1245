package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench/cpu"
	"github.com/onehop-mesh/onehop/bench/sysinfo"
	"github.com/onehop-mesh/onehop/clusters/controlplane"
	"github.com/onehop-mesh/onehop/clusters/services"
	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
)

// ScaleResult is what `onehop bench-scale` measures, for one xDS mode.
type ScaleResult struct {
	SchemaVersion int                 `json:"schema_version"`
	Environment   sysinfo.Environment `json:"environment"`
	StartedAt     time.Time           `json:"started_at"`
	Services      int                 `json:"services"`
	Endpoints     int                 `json:"endpoints_per_service"`
	Modes         []ScaleMode         `json:"modes"`
}

// ScaleMode holds the figures of one xDS flavour (sotw or delta).
type ScaleMode struct {
	XDS string `json:"xds"`
	// ReadySeconds: agent start (programs loaded and attached) to the full push programmed.
	ReadySeconds float64 `json:"ready_seconds"`
	// FullApplySeconds: programming the translated full push into the maps.
	FullApplySeconds float64 `json:"full_apply_seconds"`
	RSSBytes         uint64  `json:"rss_bytes"`
	PeakRSSBytes     uint64  `json:"peak_rss_bytes"`
	// EndpointChangeMS: one endpoint turned unhealthy in the store until the agent's maps hold the
	// change (control plane snapshot, xDS push, translation, programming), per change.
	EndpointChangeMS []float64 `json:"endpoint_change_ms"`
	// EndpointApplyMS: the programming part of those changes, from the agent's histogram.
	EndpointApplyMS float64 `json:"endpoint_apply_ms_mean"`
	// EndpointReceiptMS: for those changes, an xDS response's arrival at the agent to its config
	// programmed (or ACKed when unchanged), mean over the responses they caused.
	EndpointReceiptMS float64 `json:"endpoint_receipt_to_programmed_ms_mean"`
}

func benchScaleCmd() *cobra.Command {
	var nsvc, neps, changes int
	var resultsDir, pprofAddr string
	cmd := &cobra.Command{
		Use:   "bench-scale",
		Short: "Push N services x M endpoints to a real onehop-agent over xDS; measure programming time, memory and update latency",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return fmt.Errorf("bench-scale attaches BPF programs: run it as root")
			}
			res := ScaleResult{SchemaVersion: 1, StartedAt: time.Now().UTC(), Services: nsvc, Endpoints: neps,
				Environment: sysinfo.Collect(cmd.Context(), sysinfo.DefaultTools)}
			for _, delta := range []bool{false, true} {
				m, err := scaleRun(cmd.Context(), nsvc, neps, changes, delta, pprofAddr)
				if err != nil {
					return err
				}
				res.Modes = append(res.Modes, m)
				ch := append([]float64(nil), m.EndpointChangeMS...)
				sort.Float64s(ch)
				fmt.Printf("%-5s  full push ready %.2fs (maps programmed in %.2fs)  RSS %.0f MB (peak %.0f MB)  endpoint change median %.1f ms, max %.1f ms (after receipt %.2f ms, programming %.2f ms)\n",
					m.XDS, m.ReadySeconds, m.FullApplySeconds, float64(m.RSSBytes)/1e6, float64(m.PeakRSSBytes)/1e6,
					ch[len(ch)/2], ch[len(ch)-1], m.EndpointReceiptMS, m.EndpointApplyMS)
			}
			if err := os.MkdirAll(resultsDir, 0o755); err != nil {
				return err
			}
			b, _ := json.MarshalIndent(res, "", "  ")
			path := filepath.Join(resultsDir, "scale-"+res.StartedAt.Format("20060102T150405Z")+".json")
			fmt.Println("wrote", path)
			return os.WriteFile(path, append(b, '\n'), 0o644)
		},
	}
	cmd.Flags().IntVar(&nsvc, "services", 10000, "services")
	cmd.Flags().IntVar(&neps, "endpoints", 10, "endpoints per service")
	cmd.Flags().IntVar(&changes, "changes", 20, "single-endpoint changes to time")
	cmd.Flags().StringVar(&resultsDir, "results", "results", "directory for the result JSON")
	cmd.Flags().StringVar(&pprofAddr, "agent-pprof-address", "", "serve the agent's /debug/pprof/ here, to profile it during the run")
	return cmd
}

// scaleStore fills a store with services and ready endpoints (addresses only: nothing listens;
// what is measured is the control path).
func scaleStore(nsvc, neps int) (*services.Store, []services.Pod) {
	st := services.New(netip.MustParsePrefix("10.96.0.0/16"))
	ip := netip.MustParseAddr("10.128.0.0")
	var pods []services.Pod
	for i := 0; i < nsvc; i++ {
		app := map[string]string{"app": fmt.Sprintf("svc-%d", i)}
		st.UpsertService(services.Service{Namespace: "scale", Name: fmt.Sprintf("svc-%d", i), Selector: app,
			Ports: []services.Port{{Name: "tcp", Port: 80, TargetPort: 8080, Protocol: "TCP"}}})
		for j := 0; j < neps; j++ {
			ip = ip.Next()
			p := services.Pod{Namespace: "scale", Name: fmt.Sprintf("svc-%d-%d", i, j), Node: "n1", IPs: []netip.Addr{ip}, Labels: app, Ready: true}
			st.UpsertPod(p)
			pods = append(pods, p)
		}
	}
	return st, pods
}

func scaleRun(ctx context.Context, nsvc, neps, changes int, delta bool, pprofAddr string) (ScaleMode, error) {
	mode := ScaleMode{XDS: map[bool]string{false: "sotw", true: "delta"}[delta]}
	store, pods := scaleStore(nsvc, neps)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return mode, err
	}
	cpCtx, stopCP := context.WithCancel(ctx)
	defer stopCP()
	go controlplane.New(store, controlplane.Options{}).Serve(cpCtx, l)

	// The agent needs a cgroup to attach to; this one holds no process, so nothing is affected.
	root, err := cpu.CgroupRoot()
	if err != nil {
		return mode, err
	}
	cg := filepath.Join(root, fmt.Sprintf("onehop-scale-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		return mode, err
	}
	defer syscall.Rmdir(cg)
	dir, err := os.MkdirTemp("", "onehop-scale-")
	if err != nil {
		return mode, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "agent.sock")
	self, _ := os.Executable()
	args := []string{"--node-id", "n1", "--xds-address", l.Addr().String(), "--cgroup", cg, "--admin-socket", sock,
		"--metrics-address", "", "--log-level", "warn"}
	if pprofAddr != "" {
		args = append(args, "--pprof-address", pprofAddr)
	}
	if delta {
		args = append(args, "--delta")
	}
	proc := exec.Command(filepath.Join(filepath.Dir(self), "onehop-agent"), args...)
	logf, _ := os.Create(filepath.Join(dir, "agent.log"))
	proc.Stdout, proc.Stderr = logf, logf
	start := time.Now()
	if err := proc.Start(); err != nil {
		return mode, fmt.Errorf("start onehop-agent (run `make build`): %w", err)
	}
	defer func() {
		proc.Process.Signal(syscall.SIGTERM)
		proc.Wait()
	}()
	client := agent.Client(sock)
	for {
		if resp, err := client.Get("http://agent/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(start) > 2*time.Minute {
			b, _ := os.ReadFile(logf.Name())
			return mode, fmt.Errorf("agent not ready after 2 minutes:\n%s", b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mode.ReadySeconds = time.Since(start).Seconds()
	m := metrics(client)
	mode.FullApplySeconds = m["onehop_agent_apply_duration_seconds_sum"]
	mode.RSSBytes, mode.PeakRSSBytes = rss(proc.Process.Pid)
	if got := m["onehop_agent_programmed_endpoints"]; got != float64(nsvc*neps) {
		return mode, fmt.Errorf("agent programmed %v endpoints, want %d", got, nsvc*neps)
	}
	// Single-endpoint changes: alternately take one endpoint out and put it back.
	for i := 0; i < changes; i++ {
		p := pods[(i/2)*neps%len(pods)]
		p.Ready = i%2 == 1
		want := float64(nsvc*neps - 1)
		if p.Ready {
			want++
		}
		t0 := time.Now()
		store.UpsertPod(p)
		// /status, not /metrics: polling the Prometheus page this often would itself load the
		// agent (gzip, process collector) and slow what is measured.
		for programmedEndpoints(client) != want {
			if time.Since(t0) > 30*time.Second {
				return mode, fmt.Errorf("endpoint change %d not programmed within 30s", i)
			}
			time.Sleep(200 * time.Microsecond)
		}
		mode.EndpointChangeMS = append(mode.EndpointChangeMS, float64(time.Since(t0).Microseconds())/1000)
	}
	m2 := metrics(client)
	if n := m2["onehop_agent_apply_duration_seconds_count"] - m["onehop_agent_apply_duration_seconds_count"]; n > 0 {
		mode.EndpointApplyMS = (m2["onehop_agent_apply_duration_seconds_sum"] - m["onehop_agent_apply_duration_seconds_sum"]) / n * 1000
	}
	const receipt = "onehop_agent_xds_receipt_to_programmed_seconds"
	if n := m2[receipt+"_count"] - m[receipt+"_count"]; n > 0 {
		mode.EndpointReceiptMS = (m2[receipt+"_sum"] - m[receipt+"_sum"]) / n * 1000
	}
	return mode, nil
}

// programmedEndpoints reads the agent's /status (-1 if it cannot).
func programmedEndpoints(c *http.Client) float64 {
	resp, err := c.Get("http://agent/status")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Programmed datapath.Programmed `json:"programmed"`
	}
	if json.NewDecoder(resp.Body).Decode(&st) != nil {
		return -1
	}
	return float64(st.Programmed.Endpoints)
}

var metricLine = regexp.MustCompile(`^([a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$`)

// metrics reads the agent's unlabelled metrics (and sums labelled ones by name).
func metrics(c *http.Client) map[string]float64 {
	out := map[string]float64{}
	resp, err := c.Get("http://agent/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if m := metricLine.FindStringSubmatch(line); m != nil && !strings.Contains(line, "_bucket") {
			v, _ := strconv.ParseFloat(m[2], 64)
			out[m[1]] += v
		}
	}
	return out
}

// rss returns the resident and peak resident memory of a process.
func rss(pid int) (cur, peak uint64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			kb, _ := strconv.ParseUint(f[1], 10, 64)
			switch f[0] {
			case "VmRSS:":
				cur = kb * 1024
			case "VmHWM:":
				peak = kb * 1024
			}
		}
	}
	return cur, peak
}
