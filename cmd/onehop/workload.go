package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/bench/probe"
)

// workloadCmd holds what runs inside pods; users do not call it directly.
func workloadCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "workload", Short: "Processes that run inside lab pods", Hidden: true}
	var eofStops bool
	cmd.PersistentFlags().BoolVar(&eofStops, loadgen.StdinEOFStops, false,
		"stop as on SIGTERM when standard input ends: where the signal cannot reach the process (kubectl exec)")
	cmd.PersistentPreRun = func(c *cobra.Command, _ []string) {
		if !eofStops {
			return
		}
		ctx, cancel := context.WithCancel(c.Context())
		go func() {
			io.Copy(io.Discard, os.Stdin)
			cancel()
		}()
		c.SetContext(ctx)
	}
	var port int
	var statsHost string
	server := &cobra.Command{
		Use:   "fortio-server",
		Short: "fortio echo server",
		RunE:  func(*cobra.Command, []string) error { return loadgen.ServeStats(port, statsHost) },
	}
	server.Flags().IntVar(&port, "port", 8080, "listen port")
	idle := &cobra.Command{
		Use:   "idle",
		Short: "wait for SIGTERM (a client pod's process, whose load is exec'd beside it)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			<-cmd.Context().Done()
			return nil
		},
	}
	cmd.AddCommand(idle)
	server.Flags().StringVar(&statsHost, "stats-host", "127.0.0.1",
		"where the request count is served (port 15990); on Kubernetes 0.0.0.0, for the API server's pod proxy")
	var opts string
	load := &cobra.Command{
		Use:   "fortio-load",
		Short: "one fortio load run; events and the result as JSON lines on stdout",
		RunE: func(*cobra.Command, []string) error {
			var o loadgen.Options
			if err := json.Unmarshal([]byte(opts), &o); err != nil {
				return fmt.Errorf("--options: %w", err)
			}
			return loadgen.Load(o, os.Stdout)
		},
	}
	load.Flags().StringVar(&opts, "options", "", "load options as JSON")
	var probeCfg string
	prober := &cobra.Command{
		Use:   "probe",
		Short: `connection-survival prober until its duration or SIGTERM; {"event":"started"} then the result as JSON lines on stdout`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg probe.Config
			dec := json.NewDecoder(bytes.NewReader([]byte(probeCfg)))
			dec.DisallowUnknownFields() // a misspelt field would silently fall back to its default
			if err := dec.Decode(&cfg); err != nil {
				return fmt.Errorf("--config: %w", err)
			}
			cfg.OnStarted = func() { fmt.Println(`{"event":"started"}`) }
			res, err := probe.Run(cmd.Context(), cfg) // main's context ends on SIGTERM/SIGINT
			if err != nil {
				return err
			}
			return json.NewEncoder(os.Stdout).Encode(res)
		},
	}
	prober.Flags().StringVar(&probeCfg, "config", "", "probe.Config as JSON")
	var target string
	var timeout time.Duration
	first := &cobra.Command{
		Use:   "first-request",
		Short: `request the target until the first HTTP 200; prints {"first_success_unix_ns":..., "attempts":...}`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			at, n, err := probe.FirstSuccess(cmd.Context(), target, "/", time.Millisecond, timeout)
			if err != nil {
				return err
			}
			return json.NewEncoder(os.Stdout).Encode(map[string]int64{"first_success_unix_ns": at.UnixNano(), "attempts": int64(n)})
		},
	}
	first.Flags().StringVar(&target, "target", "", "host:port (a service VIP)")
	first.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	var connTarget string
	var connCount int
	var connTimeout time.Duration
	connect := &cobra.Command{
		Use:   "connect",
		Short: `dial the target --count times in turn, read the first line of each; prints one JSON object (answers, peers, errors by kind)`,
		RunE: func(*cobra.Command, []string) error {
			if connCount < 1 {
				return fmt.Errorf("--count must be at least 1")
			}
			return json.NewEncoder(os.Stdout).Encode(connectN(connTarget, connCount, connTimeout))
		},
	}
	connect.Flags().StringVar(&connTarget, "target", "", "VIP:port")
	connect.Flags().IntVar(&connCount, "count", 1, "connections, one after the other")
	connect.Flags().DurationVar(&connTimeout, "timeout", 2*time.Second, "limit of each dial, and of each read of the first line")
	cmd.AddCommand(server, load, prober, first, connect)
	return cmd
}

// ConnectResult is what `workload connect` prints: how N sequential connections to a target
// went, as the application in the pod saw them.
type ConnectResult struct {
	Target string `json:"target"`
	Count  int    `json:"count"`
	OK     int    `json:"ok"` // connections that answered a line
	// Answers counts the first line each connection read (a server pod's name).
	Answers map[string]int `json:"answers"`
	// Sequence is each connection's outcome in order: its answer, or "!" and the error kind.
	Sequence []string `json:"sequence"`
	// Peers is every distinct getpeername address of a connected socket (the VIP, if the data
	// plane rewrites it back).
	Peers []string `json:"peers"`
	// Errors counts failures by kind: refused, timeout, other (the dial failed) and read (the
	// connection was established but no line came: reset, EOF or read timeout).
	Errors       map[string]int    `json:"errors"`
	ErrorSamples map[string]string `json:"error_samples,omitempty"` // the first message of each kind
	// MaxFailedDialMs is the longest a failed dial took; MaxDialMs the longest any dial took.
	MaxFailedDialMs float64 `json:"max_failed_dial_ms"`
	MaxDialMs       float64 `json:"max_dial_ms"`
}

func connectN(target string, n int, timeout time.Duration) ConnectResult {
	r := ConnectResult{Target: target, Count: n, Answers: map[string]int{}, Errors: map[string]int{}, Sequence: []string{}, Peers: []string{}}
	peers := map[string]bool{}
	fail := func(kind string, err error) {
		r.Errors[kind]++
		r.Sequence = append(r.Sequence, "!"+kind)
		if r.ErrorSamples == nil {
			r.ErrorSamples = map[string]string{}
		}
		if _, ok := r.ErrorSamples[kind]; !ok {
			r.ErrorSamples[kind] = err.Error()
		}
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for i := 0; i < n; i++ {
		start := time.Now()
		conn, err := net.DialTimeout("tcp", target, timeout)
		took := time.Since(start)
		r.MaxDialMs = max(r.MaxDialMs, ms(took))
		if err != nil {
			r.MaxFailedDialMs = max(r.MaxFailedDialMs, ms(took))
			var ne net.Error
			switch {
			case errors.Is(err, syscall.ECONNREFUSED):
				fail("refused", err)
			case errors.As(err, &ne) && ne.Timeout():
				fail("timeout", err)
			default:
				fail("other", err)
			}
			continue
		}
		if p := conn.RemoteAddr().String(); !peers[p] {
			peers[p] = true
			r.Peers = append(r.Peers, p)
		}
		conn.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			fail("read", fmt.Errorf("%w (read %q)", err, line))
			continue
		}
		line = strings.TrimSpace(line)
		r.OK++
		r.Answers[line]++
		r.Sequence = append(r.Sequence, line)
	}
	sort.Strings(r.Peers)
	return r
}
