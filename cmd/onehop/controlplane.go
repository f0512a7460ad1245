package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/onehop-mesh/onehop/clusters/controlplane"
	"github.com/onehop-mesh/onehop/clusters/kube"
	"github.com/onehop-mesh/onehop/clusters/services"
	dkube "github.com/onehop-mesh/onehop/dataplane/kube"
)

// controlPlaneCmd serves a Kubernetes cluster's services over xDS with the lab's control plane
// (go-control-plane): for onehop agents on a cluster without istiod.
func controlPlaneCmd() *cobra.Command {
	var (
		kubeconfig, listen string
		cidrs              []string
	)
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Serve a Kubernetes cluster's Services and Pods to onehop agents over xDS (the lab's control plane, for clusters without istiod)",
		Long: `Watch the Services and Pods of a Kubernetes cluster (--kubeconfig, or the in-cluster config of
the pod it runs in) and serve them over xDS as the lab's control plane does: Envoy CDS/EDS/LDS/RDS
for agents in envoy mode, and Istio's ambient workload API for agents in workload mode. Plaintext
gRPC on --listen, as istiod's port 15010.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var prefixes []netip.Prefix
			for _, c := range cidrs {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					return fmt.Errorf("--service-cidr %q: %w", c, err)
				}
				prefixes = append(prefixes, p)
			}
			rc, err := dkube.RESTConfig(kubeconfig)
			if err != nil {
				return err
			}
			client, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return err
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("--listen %s: %w", listen, err)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			store := services.New(prefixes...)
			src := &kube.Source{Client: client, Store: store, Log: log}
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			synced := make(chan struct{})
			srcErr := make(chan error, 1)
			go func() { srcErr <- src.Run(ctx, synced) }()
			select {
			case <-synced:
			case err := <-srcErr:
				return err
			}
			log.Info("kubernetes: services and pods listed; serving xDS", "api_server", rc.Host, "listen", l.Addr().String())
			return controlplane.New(store, controlplane.Options{Log: log}).Serve(ctx, l)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "the cluster's kubeconfig; empty: the in-cluster config")
	f.StringVar(&listen, "listen", ":15010", "xDS listen address (plaintext gRPC)")
	f.StringSliceVar(&cidrs, "service-cidr", []string{"10.96.0.0/12"}, "the cluster's service CIDRs (its --service-cluster-ip-range), primary family first")
	return cmd
}
