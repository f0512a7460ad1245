package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/onehop-mesh/onehop/dataplane/agent"
	"github.com/onehop-mesh/onehop/dataplane/datapath"
	"github.com/onehop-mesh/onehop/dataplane/enrollment"
)

// Enroller is where enrollments go: the agent's admin Server, so that the kernel's map, the
// state file kept across restarts and the telemetry's pod metadata all follow, as they do for
// POST /enroll.
type Enroller interface {
	Apply(e agent.Enrollment, on bool) error
	Enrollments() []agent.Enrollment
}

// Controller enrolls the pods of one node that Wanted says onehop serves, and unenrolls them
// when their labels, their namespace's labels or their phase say otherwise, or they are
// deleted. Only enrollments it made (agent.Enrollment.Owner) are ever unenrolled.
type Controller struct {
	Client   kubernetes.Interface
	Node     string // pods with spec.nodeName == Node are watched
	Finder   NetnsFinder
	Enroller Enroller
	Defaults datapath.NetnsOptions // options of a pod whose TelemetryLabel does not say
	Cluster  string                // the cluster's name in pod metadata (istiod's CLUSTER_ID)
	Log      *slog.Logger
	// Resync re-checks every pod this often (a pod whose sandbox was re-created without a
	// status change, an enrollment removed by hand); 0: 10 minutes.
	Resync time.Duration
	// Cookie resolves a netns path (default enrollment.Cookie).
	Cookie func(path string) (uint64, error)

	pods, namespaces cache.SharedIndexInformer
	queue            workqueue.TypedRateLimitingInterface[string]
	ready            atomic.Bool

	mu      sync.Mutex
	initial map[string]bool // keys of the first full pass still to be synced once
}

// Ready reports whether the first full pass is done: the informers have listed the node's
// pods and the namespaces, each pod was enrolled or unenrolled once (or is being retried), and
// enrollments of pods that went away while the agent was down are gone.
func (c *Controller) Ready() bool { return c.ready.Load() }

// Run watches until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	if c.Node == "" {
		return errors.New("kubernetes mode needs the node's name (--node-id, NODE_NAME from the downward API)")
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Cookie == nil {
		c.Cookie = enrollment.Cookie
	}
	resync := c.Resync
	if resync == 0 {
		resync = 10 * time.Minute
	}
	// Only this node's pods: the API server filters, so the agent holds its node's pods, not
	// the cluster's.
	c.pods = coreinformers.NewFilteredPodInformer(c.Client, metav1.NamespaceAll, resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", c.Node).String()
		})
	c.namespaces = coreinformers.NewNamespaceInformer(c.Client, 0, cache.Indexers{})
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 30*time.Second),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "onehop-pods"})
	defer c.queue.ShutDown()

	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	if _, err := c.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) }, DeleteFunc: enqueue}); err != nil {
		return err
	}
	// A namespace's labels decide for its pods that have none: re-check them all.
	nsChanged := func(obj any) {
		ns, ok := obj.(*corev1.Namespace)
		if !ok {
			return
		}
		objs, _ := c.pods.GetIndexer().ByIndex(cache.NamespaceIndex, ns.Name)
		for _, o := range objs {
			enqueue(o)
		}
	}
	if _, err := c.namespaces.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: nsChanged,
		UpdateFunc: func(old, obj any) {
			o, n := old.(*corev1.Namespace), obj.(*corev1.Namespace)
			if o.Labels[ModeLabel] != n.Labels[ModeLabel] || o.Labels[TelemetryLabel] != n.Labels[TelemetryLabel] ||
				o.Labels[SockmapLabel] != n.Labels[SockmapLabel] {
				nsChanged(obj)
			}
		}}); err != nil {
		return err
	}
	go c.pods.RunWithContext(ctx)
	go c.namespaces.RunWithContext(ctx)
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	c.Log.Info("kubernetes: watching the node's pods", "node", c.Node)
	if !cache.WaitForCacheSync(ctx.Done(), c.pods.HasSynced, c.namespaces.HasSynced) {
		return ctx.Err()
	}
	// The first pass: every pod of the node, and every pod an enrollment was made for (pods
	// deleted, or moved off onehop, while the agent was down: they are in no event).
	c.mu.Lock()
	c.initial = map[string]bool{}
	for _, key := range c.pods.GetIndexer().ListKeys() {
		c.initial[key] = true
	}
	for _, e := range c.Enroller.Enrollments() {
		if key, _, ok := parseOwner(e.Owner); ok {
			c.initial[key] = true
		}
	}
	n := len(c.initial)
	for key := range c.initial {
		c.queue.Add(key)
	}
	c.mu.Unlock()
	c.Log.Info("kubernetes: informers synced", "pods", len(c.pods.GetIndexer().ListKeys()), "first_pass", n)
	if n == 0 {
		c.ready.Store(true)
	}
	for c.next() {
	}
	return ctx.Err()
}

// next syncs one pod; false once the queue is shut down.
func (c *Controller) next() bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	err := c.sync(key)
	switch {
	case err == nil:
		c.queue.Forget(key)
	case errors.Is(err, ErrNoProcess) && c.queue.NumRequeues(key) < 20:
		// Seen before its sandbox's processes (or right after they stopped): retried soon.
		c.Log.Debug("kubernetes: pod not found on the node yet, retrying", "pod", key)
		c.queue.AddRateLimited(key)
	default:
		c.Log.Warn("kubernetes: pod not enrolled as it should be, retrying", "pod", key, "err", err, "retries", c.queue.NumRequeues(key))
		c.queue.AddRateLimited(key)
	}
	c.mu.Lock()
	if c.initial[key] {
		delete(c.initial, key)
		if len(c.initial) == 0 {
			c.ready.Store(true)
			c.Log.Info("kubernetes: first pass done: enrollments follow the node's pods")
		}
	}
	c.mu.Unlock()
	return true
}

// sync makes the enrollments of the pod at key what they should be: none, or one for its
// current network namespace. An enrollment that is already right is left alone (no map write):
// a restarted agent changes nothing for the pods that stay enrolled.
func (c *Controller) sync(key string) error {
	var mine []agent.Enrollment // this key's enrollments, whatever the pod's UID then
	for _, e := range c.Enroller.Enrollments() {
		if k, _, ok := parseOwner(e.Owner); ok && k == key {
			mine = append(mine, e)
		}
	}
	var want *agent.Enrollment
	obj, exists, err := c.pods.GetIndexer().GetByKey(key)
	if err != nil {
		return err
	}
	if exists {
		pod := obj.(*corev1.Pod)
		var nsLabels map[string]string
		if ns, ok, _ := c.namespaces.GetIndexer().GetByKey(pod.Namespace); ok {
			nsLabels = ns.(*corev1.Namespace).Labels
		}
		if Wanted(pod, nsLabels) {
			e, err := c.enrollment(pod, nsLabels, mine)
			if err != nil {
				return err
			}
			want = &e
		}
	}
	// Stale first (another UID of the same name, a sandbox re-created with a new namespace):
	// an enrollment is kept by its netns path, which the new one may share.
	for _, e := range mine {
		if want != nil && e.Cookie == want.Cookie && e.Owner == want.Owner {
			continue
		}
		if err := c.Enroller.Apply(e, false); err != nil {
			return err
		}
		c.Log.Info("kubernetes: pod unenrolled", "pod", key, "netns", e.Netns, "cookie", e.Cookie)
	}
	if want == nil {
		if exists {
			c.annotate(obj.(*corev1.Pod), false)
		}
		return nil
	}
	for _, e := range mine {
		if same(e, *want) {
			c.annotate(obj.(*corev1.Pod), true) // enrolled as it should be
			return nil
		}
	}
	if err := c.Enroller.Apply(*want, true); err != nil {
		return err
	}
	c.Log.Info("kubernetes: pod enrolled", "pod", key, "netns", want.Netns, "cookie", want.Cookie,
		"telemetry", want.Options.Telemetry, "access_log", want.Options.AccessLog)
	c.annotate(obj.(*corev1.Pod), true)
	return nil
}

// annotate sets or removes EnrolledAnnotation when the pod's says otherwise. A failure (an
// older chart's RBAC without patch) is logged: the enrollment stands, and a later sync
// (an update, the resync) tries again.
func (c *Controller) annotate(pod *corev1.Pod, on bool) {
	if v, has := pod.Annotations[EnrolledAnnotation]; has == on && (!on || v == c.Node) {
		return
	}
	value := "null"
	if on {
		value = strconv.Quote(c.Node)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, EnrolledAnnotation, value)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := c.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		c.Log.Warn("kubernetes: annotate pod", "pod", pod.Namespace+"/"+pod.Name, "annotation", EnrolledAnnotation, "err", err)
	}
}

// enrollment is what pod's enrollment should be, its network namespace found on the node.
func (c *Controller) enrollment(pod *corev1.Pod, nsLabels map[string]string, mine []agent.Enrollment) (agent.Enrollment, error) {
	path, err := c.Finder.Netns(CgroupUID(pod))
	if err != nil {
		return agent.Enrollment{}, err
	}
	cookie, err := c.Cookie(path)
	if err != nil {
		// The process went away between finding and asking: look again later.
		return agent.Enrollment{}, fmt.Errorf("%w (%v)", ErrNoProcess, err)
	}
	e := agent.Enrollment{Netns: path, Cookie: cookie, Options: Options(pod, nsLabels, c.Defaults),
		Pod: Workload(pod, c.Cluster), PodIPs: PodIPs(pod), Owner: Owner(pod)}
	for _, m := range mine {
		if m.Cookie == cookie && m.Owner == e.Owner {
			// The same namespace, maybe found through another process now: keep the path it is
			// known by, so nothing changes for it.
			e.Netns = m.Netns
		}
	}
	return e, nil
}

// same reports whether two enrollments are alike in all that Apply would write.
func same(a, b agent.Enrollment) bool {
	return a.Netns == b.Netns && a.Cookie == b.Cookie && a.Owner == b.Owner && a.Options == b.Options &&
		(a.Pod == nil) == (b.Pod == nil) && (a.Pod == nil || *a.Pod == *b.Pod) && slices.Equal(a.PodIPs, b.PodIPs)
}
