package main

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/localkube"
	"github.com/onehop-mesh/onehop/clusters/netns"
)

func newProvider() (*netns.Provider, error) {
	p, err := netns.New()
	if err != nil {
		return nil, err
	}
	p.Progress = func(msg string) { fmt.Fprintln(os.Stderr, "  ·", msg) }
	return p, nil
}

func clusterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Bring the embedded netns lab cluster up or down"}
	var specPath, name string
	up := &cobra.Command{
		Use:   "up",
		Short: "Create the lab (idempotent: completes or reuses a lab of the same name)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec := clusters.Default()
			if specPath != "" {
				var err error
				if spec, err = clusters.LoadSpec(specPath); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("name") {
				spec.Name = name
			}
			p, err := newProvider()
			if err != nil {
				return err
			}
			start := time.Now()
			c, err := p.Up(cmd.Context(), spec)
			if err != nil {
				return err
			}
			defer c.Close()
			fmt.Printf("lab %q is up: %d nodes, %d pods, %d services (%.2fs)\n", c.Name(), spec.Nodes, len(c.Pods()),
				len(c.Services().Snapshot().Services), time.Since(start).Seconds())
			return nil
		},
	}
	up.Flags().StringVarP(&specPath, "spec", "f", "", "cluster spec YAML (default: 2 IPv4 nodes, no pods)")
	up.Flags().StringVar(&name, "name", "lab", "lab name (overrides the spec's)")

	var downProvider string
	down := &cobra.Command{
		Use:   "down",
		Short: "Remove everything the lab created (also after a killed run)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			if downProvider == localkube.ProviderName { // a lab run with --provider localkube --keep
				if err := localkube.Down(cmd.Context(), name); err != nil {
					return err
				}
				fmt.Printf("localkube cluster %q is down (%.2fs)\n", name, time.Since(start).Seconds())
				return nil
			}
			p, err := newProvider()
			if err != nil {
				return err
			}
			if err := p.Down(cmd.Context(), name); err != nil {
				return err
			}
			fmt.Printf("lab %q is down (%.2fs)\n", name, time.Since(start).Seconds())
			return nil
		},
	}
	down.Flags().StringVar(&name, "name", "lab", "lab name")
	down.Flags().StringVar(&downProvider, "provider", netns.ProviderName, "netns, or localkube (the lab's whole cluster)")

	status := &cobra.Command{
		Use:   "status",
		Short: "Show the lab's nodes, pods and services",
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := newProvider()
			if err != nil {
				return err
			}
			c, err := p.Open(cmd.Context(), name)
			if err != nil {
				return err
			}
			defer c.Close()
			spec := c.Spec()
			fmt.Printf("lab %q (provider %s): %d nodes %v, families %v\n\n", c.Name(), c.Provider(), spec.Nodes, spec.NodeNames(), spec.IPFamilies)
			w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "POD\tNAMESPACE\tNODE\tIPS\tPROCESSES")
			for _, pod := range c.Pods() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%d\n", pod.Name, pod.Namespace, pod.Node, pod.IPs, countProcs(pod.Cgroup))
			}
			w.Flush()
			fmt.Printf("\nSERVICES\n%s", c.Services().Snapshot())
			return nil
		},
	}
	status.Flags().StringVar(&name, "name", "lab", "lab name")
	cmd.AddCommand(up, down, status)
	return cmd
}

func countProcs(cgroup string) int {
	b, err := os.ReadFile(cgroup + "/cgroup.procs")
	if err != nil {
		return 0
	}
	n := 0
	for _, c := range b {
		if c == '\n' {
			n++
		}
	}
	return n
}
