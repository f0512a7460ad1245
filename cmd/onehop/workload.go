package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/bench/loadgen"
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
	cmd.AddCommand(server, load)
	return cmd
}
