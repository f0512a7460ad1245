// Command kube-bins builds what the Kubernetes tests run into the cache ahead of them (`make
// kube-bins`): etcd and kube-apiserver (internal/kubetest) and helm (deploy/chart's tests). A cold
// build takes about 10 minutes on 2 cores; with everything cached it returns at once.
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
	fmt.Fprintf(os.Stdout, "etcd %s\nkube-apiserver %s\nhelm %s\n", bins.Etcd, bins.APIServer, helm)
}
