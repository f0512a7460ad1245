package kube

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Deletion tells, when the agent stops, whether its DaemonSet is being removed (helm uninstall,
// kubectl delete) rather than restarted or rolled: only then are the node's programs and pins
// removed. A pre-delete hook cannot do this on every node (deploy/chart/onehop/README.md), so
// each agent asks for itself, as Istio's CNI node agent does.
//
// It watches its one DaemonSet from the start: helm deletes the DaemonSet and then, at once, the
// RBAC that lets the agent read it, and the garbage collector stops the pods only after that.
// A watch has seen the deletion before the agent is told to stop; a read at that moment may be
// refused.
type Deletion struct {
	Client    kubernetes.Interface
	Namespace string // the agent pod's (POD_NAMESPACE)
	Pod       string // the agent pod's name (POD_NAME)
	Log       *slog.Logger

	dsName  string
	dsUID   atomic.Value // string: the UID of the DaemonSet the pod belongs to
	deleted atomic.Bool
}

// Start finds the DaemonSet that owns the agent's pod and watches it until ctx is done.
func (d *Deletion) Start(ctx context.Context) error {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Namespace == "" || d.Pod == "" {
		return fmt.Errorf("uninstall on delete needs the agent's pod name and namespace (POD_NAME, POD_NAMESPACE from the downward API)")
	}
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pod, err := d.Client.CoreV1().Pods(d.Namespace).Get(gctx, d.Pod, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("uninstall on delete: reading the agent's own pod %s/%s: %w", d.Namespace, d.Pod, err)
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "DaemonSet" {
		return fmt.Errorf("uninstall on delete: pod %s/%s is not run by a DaemonSet; nothing tells its deletion from a restart", d.Namespace, d.Pod)
	}
	d.dsName = ref.Name
	d.dsUID.Store(string(ref.UID))
	// One object: list and watch with metadata.name, which RBAC allows with resourceNames.
	lw := cache.NewListWatchFromClient(d.Client.AppsV1().RESTClient(), "daemonsets", d.Namespace,
		fields.OneTermEqualSelector("metadata.name", ref.Name))
	inf := cache.NewSharedIndexInformer(lw, &appsv1.DaemonSet{}, 0, cache.Indexers{})
	seen := func(obj any) {
		if ds, ok := obj.(*appsv1.DaemonSet); ok && string(ds.UID) == string(ref.UID) && ds.DeletionTimestamp != nil {
			d.mark("being deleted")
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: seen,
		UpdateFunc: func(_, obj any) { seen(obj) },
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if ds, ok := obj.(*appsv1.DaemonSet); ok && string(ds.UID) == string(ref.UID) {
				d.mark("deleted")
			}
		}}); err != nil {
		return err
	}
	go inf.RunWithContext(ctx)
	d.Log.Info("uninstall on delete: watching the agent's DaemonSet", "daemonset", d.Namespace+"/"+ref.Name)
	return nil
}

func (d *Deletion) mark(how string) {
	if !d.deleted.Swap(true) {
		d.Log.Info("the agent's DaemonSet is "+how+": the node's programs and pins go when the agent stops", "daemonset", d.Namespace+"/"+d.dsName)
	}
}

// Deleting reports whether the DaemonSet is gone or going: seen so by the watch, or, if the
// watch has not said, by a read now. A DaemonSet of the same name but another UID is a new
// install whose agents adopt the pins: not a deletion. Any doubt (the API server unreachable, the
// read refused) keeps the pins: a wrong uninstall interrupts traffic, a wrong keep leaves
// programs that `onehop-agent --uninstall` removes.
func (d *Deletion) Deleting(ctx context.Context) bool {
	if d.deleted.Load() {
		return true
	}
	if d.dsName == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ds, err := d.Client.AppsV1().DaemonSets(d.Namespace).Get(ctx, d.dsName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		d.mark("deleted")
	case err != nil:
		d.Log.Warn("uninstall on delete: could not read the agent's DaemonSet; keeping the pins", "daemonset", d.Namespace+"/"+d.dsName, "err", err)
	case string(ds.UID) == d.dsUID.Load().(string) && ds.DeletionTimestamp != nil:
		d.mark("being deleted")
	}
	return d.deleted.Load()
}
