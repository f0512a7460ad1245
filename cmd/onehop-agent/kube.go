package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/kube"
)

// kubeConfig is Kubernetes mode (see dataplane/kube).
type kubeConfig struct {
	on         bool
	kubeconfig string // "": in-cluster
	procRoot   string
	// uninstallOnDelete: when the agent stops and its DaemonSet is being deleted, run
	// --uninstall (see kube.Deletion).
	uninstallOnDelete bool
}

// kubeMode is Kubernetes mode running.
type kubeMode struct {
	ready    func() bool
	deletion *kube.Deletion // nil unless --uninstall-on-delete
}

// startKubernetes starts enrolling the node's pods as their labels say, through srv (so the
// state file and pod metadata follow as for POST /enroll). Its ready says whether the first pass
// is done, which /readyz waits for.
func startKubernetes(ctx context.Context, cfg config, srv *agent.Server, log *slog.Logger) (*kubeMode, error) {
	rc, err := kubeRESTConfig(cfg.kube.kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.UserAgent = "onehop-agent/" + cfg.nodeID
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	klog.SetSlogLogger(log.With("component", "client-go")) // its retries and watch errors, in our log
	c := &kube.Controller{Client: client, Node: cfg.id.NodeName, Finder: &kube.ProcFinder{Root: cfg.kube.procRoot},
		Enroller: srv, Defaults: srv.Defaults, Cluster: cfg.id.ClusterID, Log: log.With("component", "kubernetes")}
	if c.Node == "" {
		return nil, errors.New("--kubernetes needs --node-id to be the node's name (NODE_NAME from spec.nodeName), not a whole xDS node id")
	}
	log.Info("kubernetes mode", "api_server", rc.Host, "node", c.Node, "proc", cfg.kube.procRoot)
	m := &kubeMode{ready: c.Ready}
	if cfg.kube.uninstallOnDelete {
		m.deletion = &kube.Deletion{Client: client, Namespace: cfg.id.Namespace, Pod: cfg.id.PodName, Log: log.With("component", "kubernetes")}
		if err := m.deletion.Start(ctx); err != nil {
			return nil, err
		}
	}
	go func() {
		if err := c.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("kubernetes mode stopped: pods are no longer enrolled or unenrolled", "err", err)
		}
	}()
	return m, nil
}

// kubeRESTConfig is how to reach the API server: the kubeconfig (a list, as KUBECONFIG may be,
// is merged as kubectl merges it), else the in-cluster config of the agent's pod.
func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--kubernetes: no API server to watch: %v. Run the agent in a pod (its service account's in-cluster config), or pass --kubeconfig (KUBECONFIG)", err)
		}
		return c, nil
	}
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: kubeconfig}
	if paths := filepath.SplitList(kubeconfig); len(paths) > 1 {
		rules = &clientcmd.ClientConfigLoadingRules{Precedence: paths}
	}
	c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
	}
	return c, nil
}
