// Command kube-bins builds what the Kubernetes tests run into the cache ahead of them (`make
// kube-bins`): etcd and kube-apiserver (internal/kubetest), helm (deploy/chart's tests), and a
// node's kubelet, kube-controller-manager, kube-scheduler, kube-proxy and kubectl
// (clusters/localkube, e2e). A cold build takes about 20-25 minutes on 2 cores; with everything
// cached it returns at once.
package main

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/onehop-mesh/onehop/internal/kubetest"
)

func main() {
	log.SetFlags(log.Ltime)
	ctx := context.Background()
	bins, err := kubetest.Binaries(ctx, log.Printf)
	if err != nil {
		log.Fatal(err)
	}
	helm, err := kubetest.Helm(ctx, log.Printf)
	if err != nil {
		log.Fatal(err)
	}
	node, err := kubetest.NodeBinaries(ctx, log.Printf)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "etcd %s\nkube-apiserver %s\nhelm %s\nkubelet %s\nkube-controller-manager %s\nkube-scheduler %s\nkube-proxy %s\nkubectl %s\n",
		bins.Etcd, bins.APIServer, helm, node.Kubelet, node.ControllerManager, node.Scheduler, node.Proxy, node.Kubectl)
}
