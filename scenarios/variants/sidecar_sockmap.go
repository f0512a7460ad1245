package variants

import (
	"context"
	"errors"

	"github.com/onehop-mesh/onehop/clusters"
)

// SidecarSockmap is the sidecar variant (mutual TLS, Istio's default) with its pods' same-node
// hops accelerated by onehop's agents, as Kmesh's sockmap did for Istio sidecars: the
// application to its sidecar (iptables REDIRECT, on the pod's loopback), sidecar to sidecar on
// one node, and the sidecar to its application. The agents enroll the pods for sockmap only;
// the sidecars keep balancing, routing and encrypting.
type SidecarSockmap struct {
	*Sidecar
	agents *Onehop
}

func init() {
	RegisterNetns(func(c clusters.Cluster) NetnsVariant {
		return &SidecarSockmap{Sidecar: &Sidecar{MTLS: true, Sockmap: true}, agents: agentsOf(c)}
	})
}

func (s *SidecarSockmap) Describe() string {
	return s.Sidecar.Describe() + "; same-node hops (application to sidecar, sidecar to sidecar, sidecar to application) accelerated by onehop-agent's sockmap"
}

// Install injects the sidecars, then has onehop's agents enroll the pods.
func (s *SidecarSockmap) Install(ctx context.Context, c clusters.Cluster) error {
	if err := s.Sidecar.Install(ctx, c); err != nil {
		return err
	}
	if err := s.agents.Install(ctx, c); err != nil {
		return errors.Join(err, s.Sidecar.Uninstall(context.WithoutCancel(ctx), c))
	}
	return nil
}

func (s *SidecarSockmap) Uninstall(ctx context.Context, c clusters.Cluster) error {
	return errors.Join(s.agents.Uninstall(ctx, c), s.Sidecar.Uninstall(ctx, c))
}

func (s *SidecarSockmap) AddPod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	if err := s.Sidecar.AddPod(ctx, c, pod); err != nil {
		return err
	}
	return s.agents.AddPod(ctx, c, pod)
}

func (s *SidecarSockmap) RemovePod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	return errors.Join(s.agents.RemovePod(ctx, c, pod), s.Sidecar.RemovePod(ctx, c, pod))
}
