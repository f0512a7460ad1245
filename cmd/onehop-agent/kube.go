package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
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
	rc, err := kube.RESTConfig(cfg.kube.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubernetes: %w", err)
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
