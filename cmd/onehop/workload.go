package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench/loadgen"
	"github.com/onehop-mesh/onehop/bench/probe"
)

// workloadCmd holds what runs inside pods; users do not call it directly.
func workloadCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "workload", Short: "Processes that run inside lab pods", Hidden: true}
	var port int
	server := &cobra.Command{
		Use:   "fortio-server",
		Short: "fortio echo server",
		RunE:  func(*cobra.Command, []string) error { return loadgen.Serve(port) },
	}
	server.Flags().IntVar(&port, "port", 8080, "listen port")
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
	cmd.AddCommand(server, load, prober, first)
	return cmd
}
