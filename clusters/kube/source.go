package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/onehop-mesh/onehop/clusters/services"
)

// Source fills a services.Store from a real Kubernetes API server: its ClusterIP Services
// (with a selector) and its Pods, so that the lab's control plane serves a real cluster's
// services to onehop agents as istiod would. The Store selects endpoints itself, as the
// EndpointSlice controller does: ready pods whose labels match a service's selector.
//
// The Store keys pods by name: two pods of one name in two namespaces (StatefulSets) would
// shadow each other; the later one seen wins, and the collision is logged.
type Source struct {
	Client kubernetes.Interface
	Store  *services.Store
	Log    *slog.Logger
}

// Run watches until ctx is done; synced is closed once both informers have listed.
func (k *Source) Run(ctx context.Context, synced chan<- struct{}) error {
	if k.Log == nil {
		k.Log = slog.New(slog.DiscardHandler)
	}
	f := informers.NewSharedInformerFactory(k.Client, 0)
	svcs, pods := f.Core().V1().Services().Informer(), f.Core().V1().Pods().Informer()
	if _, err := svcs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.service(o, false) },
		UpdateFunc: func(_, o any) { k.service(o, false) },
		DeleteFunc: func(o any) { k.service(o, true) },
	}); err != nil {
		return err
	}
	owner := map[string]string{} // pod name -> namespace that holds it in the store
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.pod(o, false, owner) },
		UpdateFunc: func(_, o any) { k.pod(o, false, owner) },
		DeleteFunc: func(o any) { k.pod(o, true, owner) },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), svcs.HasSynced, pods.HasSynced) {
		return fmt.Errorf("kubernetes: services and pods never listed: %w", ctx.Err())
	}
	if synced != nil {
		close(synced)
	}
	<-ctx.Done()
	return nil
}

func unwrap(o any) any {
	if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return o
}

// service mirrors one Service: a ClusterIP service with a selector; others (headless,
// ExternalName, selectorless with hand-made EndpointSlices) are not balanced by onehop.
func (k *Source) service(o any, deleted bool) {
	s, ok := unwrap(o).(*corev1.Service)
	if !ok {
		return
	}
	if deleted || s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone || len(s.Spec.Selector) == 0 {
		k.Store.DeleteService(s.Namespace, s.Name)
		return
	}
	svc := services.Service{Namespace: s.Namespace, Name: s.Name, Selector: s.Spec.Selector}
	for _, ip := range s.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			svc.ClusterIPs = append(svc.ClusterIPs, a)
		}
	}
	for _, p := range s.Spec.Ports {
		proto := services.Protocol("TCP")
		switch p.Protocol {
		case corev1.ProtocolUDP:
			proto = services.Protocol("UDP")
		case corev1.ProtocolSCTP:
			continue
		}
		target := uint16(p.TargetPort.IntValue())
		if target == 0 { // a named target port: the pods' own port of that name is not looked up
			target = uint16(p.Port)
		}
		svc.Ports = append(svc.Ports, services.Port{Name: p.Name, Port: uint16(p.Port), TargetPort: target, Protocol: proto})
	}
	if _, err := k.Store.UpsertService(svc); err != nil {
		k.Log.Warn("kubernetes: service not served", "service", svc.Key(), "err", err)
	}
}

// pod mirrors one Pod: where it runs, its IPs, labels and readiness.
func (k *Source) pod(o any, deleted bool, owner map[string]string) {
	p, ok := unwrap(o).(*corev1.Pod)
	if !ok {
		return
	}
	if ns, ok := owner[p.Name]; ok && ns != p.Namespace {
		if deleted {
			return // the store holds the other one
		}
		k.Log.Warn("kubernetes: two pods of one name; the store keeps the later", "pod", p.Name, "namespaces", []string{ns, p.Namespace})
	}
	if deleted || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		k.Store.DeletePod(p.Name)
		delete(owner, p.Name)
		return
	}
	sp := services.Pod{Namespace: p.Namespace, Name: p.Name, Node: p.Spec.NodeName, Labels: p.Labels}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			sp.IPs = append(sp.IPs, a)
		}
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			sp.Ready = c.Status == corev1.ConditionTrue
		}
	}
	owner[p.Name] = p.Namespace
	k.Store.UpsertPod(sp)
}
