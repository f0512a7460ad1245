package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/netns"
)

func doctorCmd() *cobra.Command {
	var ipv6 bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this machine can run the embedded lab (root, tools, namespaces, cgroup v2)",
		RunE: func(*cobra.Command, []string) error {
			spec := clusters.Default()
			if ipv6 {
				spec.IPFamilies = []string{"ipv4", "ipv6"}
			}
			if err := netns.Preflight(spec); err != nil {
				return fmt.Errorf("this machine cannot run the lab yet:\n%w", err)
			}
			fmt.Println("onehop doctor: ok (root, iproute2, iptables, network namespaces, cgroup v2)")
			return nil
		},
	}
	cmd.Flags().BoolVar(&ipv6, "ipv6", true, "also check what dual-stack labs need")
	return cmd
}
