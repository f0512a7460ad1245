package variants

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"syscall"

	"github.com/onehop-mesh/onehop/clusters"
	"github.com/onehop-mesh/onehop/clusters/services"
)

// OnehopWaypoint is onehop's dual engine (Kmesh's "dual-engine mode"): L4 in the kernel for
// everything, and for services that have a waypoint, connect() is steered to the waypoint, an L7
// proxy that balances each HTTP request over the service's endpoints. It shares onehop's agents.
//
// In the lab a service S gets its waypoint through the service store: a service S-backend takes
// S's selector, the waypoint serves S-backend, and S then selects the waypoint pod. The agents
// thus steer connections to S's VIP straight to the waypoint (one hop in the kernel), and the
// waypoint carries them to S's pods. Traffic to the waypoint is plaintext HTTP.
type OnehopWaypoint struct {
	base *Onehop

	mu        sync.Mutex
	waypoints []*Waypoint
	saved     []services.Service // the services as they were, to restore on uninstall
}

func init() {
	RegisterNetns(func(c clusters.Cluster) NetnsVariant { return &OnehopWaypoint{base: agentsOf(c)} })
}

func (*OnehopWaypoint) Name() string { return "onehop-waypoint" }
func (w *OnehopWaypoint) Describe() string {
	v, err := HAProxyVersion()
	if err != nil {
		v = "(not installed: run `make deps`)"
	}
	return w.base.Describe() + "; services sent at connect() to a waypoint: HAProxy " + v + " L7 HTTP, plaintext"
}
func (w *OnehopWaypoint) Labels() map[string]string {
	return map[string]string{DataplaneModeLabel: "onehop", UseWaypointLabel: "waypoint"}
}

// Install gives every service of the variant's namespaces a waypoint, then starts (or shares)
// onehop's agents and enrolls the namespaces' pods.
func (w *OnehopWaypoint) Install(ctx context.Context, c clusters.Cluster) (err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() {
		if err != nil {
			w.removeWaypoints(context.WithoutCancel(ctx), c)
		}
	}()
	mine := map[string]bool{}
	for _, ns := range c.Spec().Namespaces {
		if maps.Equal(ns.Labels, w.Labels()) {
			mine[ns.Name] = true
		}
	}
	for _, v := range c.Services().Snapshot().Services {
		if !mine[v.Namespace] {
			continue
		}
		if err := w.addWaypoint(ctx, c, v.Service); err != nil {
			return fmt.Errorf("onehop-waypoint: service %s: %w", v.Key(), err)
		}
	}
	return w.base.Install(ctx, c)
}

func (w *OnehopWaypoint) addWaypoint(ctx context.Context, c clusters.Cluster, svc services.Service) error {
	backend := serviceDef(svc)
	backend.Name = svc.Name + "-backend"
	if _, err := c.UpsertService(ctx, backend); err != nil {
		return err
	}
	w.saved = append(w.saved, svc)
	wp, err := DeployWaypoint(ctx, c, svc.Namespace, backend.Name, false)
	if err != nil {
		return err
	}
	w.waypoints = append(w.waypoints, wp)
	front := serviceDef(svc)
	front.Selector = map[string]string{WaypointForLabel: backend.Name}
	for i, p := range front.Ports {
		addr, ok := wp.AddrFor(uint16(p.Port))
		if !ok {
			return fmt.Errorf("its waypoint does not listen for port %d", p.Port)
		}
		front.Ports[i].TargetPort = int(addr.Port())
	}
	_, err = c.UpsertService(ctx, front)
	return err
}

// serviceDef is the definition that makes svc.
func serviceDef(svc services.Service) clusters.ServiceDef {
	d := clusters.ServiceDef{Name: svc.Name, Namespace: svc.Namespace, Selector: maps.Clone(svc.Selector)}
	for _, p := range svc.Ports {
		d.Ports = append(d.Ports, clusters.ServicePort{Name: p.Name, Port: int(p.Port), TargetPort: int(p.TargetPort), Protocol: string(p.Protocol)})
	}
	return d
}

// Uninstall restores the services, removes the waypoints and releases onehop's agents.
func (w *OnehopWaypoint) Uninstall(ctx context.Context, c clusters.Cluster) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.removeWaypoints(ctx, c), w.base.Uninstall(ctx, c))
}

func (w *OnehopWaypoint) removeWaypoints(ctx context.Context, c clusters.Cluster) error {
	var errs []error
	for _, svc := range w.saved {
		if _, err := c.UpsertService(ctx, serviceDef(svc)); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, c.DeleteService(ctx, svc.Namespace, svc.Name+"-backend"))
	}
	for _, wp := range w.waypoints {
		errs = append(errs, wp.Stop(ctx))
	}
	w.saved, w.waypoints = nil, nil
	return errors.Join(errs...)
}

// Restart restarts onehop's agent on the node (the waypoints are pods, not the daemon).
func (w *OnehopWaypoint) Restart(ctx context.Context, c clusters.Cluster, node string, sig syscall.Signal) (RestartEvent, error) {
	return w.base.Restart(ctx, c, node, sig)
}

// AddPod and RemovePod enroll a new pod as onehop does.
func (w *OnehopWaypoint) AddPod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	return w.base.AddPod(ctx, c, pod)
}

func (w *OnehopWaypoint) RemovePod(ctx context.Context, c clusters.Cluster, pod clusters.Pod) error {
	return w.base.RemovePod(ctx, c, pod)
}
