// Command onehop is the lab: it brings up clusters, runs scenarios against data plane variants
// and renders reports. `onehop workload ...` is what runs inside the lab's pods.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})))
	root := &cobra.Command{
		Use:           "onehop",
		Short:         "Reproducible service-mesh data plane benchmarks on a local lab cluster",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(clusterCmd(), runCmd(), reportCmd(), exportCmd(), benchAllCmd(), benchScaleCmd(), gateCmd(), doctorCmd(), workloadCmd(), imageCmd(), controlPlaneCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "onehop:", err)
		os.Exit(1)
	}
}
