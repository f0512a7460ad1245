package istiod

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// podDef is a lab pod and, unless NotInKube, the Kubernetes Pod istio's fake sees for it.
type podDef struct {
	Name, Namespace, Node string
	Labels                map[string]string
	SA                    string // service account; default: the app label, else "default"
	Serve                 []int  // TCP ports the test serves the pod's name on
	// NotInKube: the lab pod stands for something that is no Pod in Kubernetes (the apiserver,
	// a VM behind a ServiceEntry).
	NotInKube bool
	// Later: the Pod is not in Kubernetes at the start (the test creates it).
	Later bool
}

// portDef is a Service port.
type portDef struct {
	Name        string
	Port        int32
	Target      int32
	Protocol    corev1.Protocol // default TCP
	AppProtocol string
}

// svcDef is a Kubernetes Service with a fixed ClusterIP, and its EndpointSlice (the fake has no
// endpoint controller, so the test writes the slices as Kubernetes would).
type svcDef struct {
	Name, Namespace, VIP string
	Selector             map[string]string
	Ports                []portDef
	Labels, Annotations  map[string]string
	// Addresses are the lab pods of a selector-less service's endpoints (no targetRef: the
	// kubernetes service's apiserver).
	Addresses []string
	// Later: the Service does not exist at the start (the test creates it).
	Later bool
}

func (s svcDef) host() string { return s.Name + "." + s.Namespace + ".svc.cluster.local" }

// kubeBuilder makes Kubernetes objects from lab pods and service definitions.
type kubeBuilder struct {
	ip     func(pod string) string  // a pod's IP
	nodeIP func(node string) string // a node's IP
	pods   []podDef
}

// labKube is a kubeBuilder for the lab's pods, at their lab IPs.
func labKube(l *lab, pods []podDef) kubeBuilder {
	return kubeBuilder{ip: l.ip, nodeIP: func(n string) string { return l.c.NodeAddresses(n)[0].String() }, pods: pods}
}

func (b kubeBuilder) pod(name string) podDef {
	for _, p := range b.pods {
		if p.Name == name {
			return p
		}
	}
	panic("no pod " + name)
}

func uid(kind, ns, name string) types.UID {
	return types.UID(fmt.Sprintf("%s-%s-%s", strings.ToLower(kind), ns, name))
}

func boolp(b bool) *bool { return &b }

// kubeNamespace is a Kubernetes Namespace.
func kubeNamespace(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: uid("ns", "", name),
			Labels: mergeLabels(labels, map[string]string{"kubernetes.io/metadata.name": name})},
		Status: corev1.NamespaceStatus{Phase: corev1.NamespaceActive}}
}

func mergeLabels(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// node is a Kubernetes Node for a lab node.
func (b kubeBuilder) node(name string) *corev1.Node {
	ip := b.nodeIP(name)
	return &corev1.Node{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: uid("node", "", name), Labels: map[string]string{
			"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
			"topology.kubernetes.io/region": "lab", "topology.kubernetes.io/zone": "lab-a"}},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
}

// kubePod is the Pod of a lab pod: running and ready, with the lab's IP.
func (b kubeBuilder) kubePod(pd podDef) *corev1.Pod {
	ip := b.ip(pd.Name)
	sa := pd.SA
	if sa == "" {
		sa = pd.Labels["app"]
	}
	if sa == "" {
		sa = "default"
	}
	var ports []corev1.ContainerPort
	for _, p := range pd.Serve {
		ports = append(ports, corev1.ContainerPort{ContainerPort: int32(p), Protocol: corev1.ProtocolTCP})
	}
	hostIP := b.nodeIP(pd.Node)
	return &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: pd.Name, Namespace: pd.Namespace, UID: uid("pod", pd.Namespace, pd.Name), Labels: pd.Labels},
		Spec: corev1.PodSpec{NodeName: pd.Node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "app", Image: "onehop/serve-name", Ports: ports}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: hostIP,
			HostIPs: []corev1.HostIP{{IP: hostIP}},
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
				{Type: corev1.PodInitialized, Status: corev1.ConditionTrue},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
}

// agentPod is the onehop-agent DaemonSet's pod on a node: host network, so its IP is the node's.
func (b kubeBuilder) agentPod(node string) *corev1.Pod {
	ip := b.nodeIP(node)
	labels := map[string]string{"app": "onehop-agent"}
	return &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "onehop-agent-" + node, Namespace: "istio-system", UID: uid("pod", "istio-system", "onehop-agent-"+node), Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "onehop-agent", HostNetwork: true,
			Containers: []corev1.Container{{Name: "agent", Image: "onehop/onehop-agent"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: ip,
			Conditions: []corev1.PodCondition{{Type: corev1.ContainersReady, Status: corev1.ConditionTrue}, {Type: corev1.PodReady, Status: corev1.ConditionTrue}}}}
}

// service is the Kubernetes Service of s.
func (b kubeBuilder) service(s svcDef) *corev1.Service {
	var ports []corev1.ServicePort
	for _, p := range s.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		sp := corev1.ServicePort{Name: p.Name, Port: p.Port, TargetPort: intstr.FromInt32(p.Target), Protocol: proto}
		if p.AppProtocol != "" {
			sp.AppProtocol = &p.AppProtocol
		}
		ports = append(ports, sp)
	}
	single := corev1.IPFamilyPolicySingleStack
	return &corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Namespace: s.Namespace, UID: uid("svc", s.Namespace, s.Name), Labels: s.Labels, Annotations: s.Annotations},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: s.VIP, ClusterIPs: []string{s.VIP},
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol}, IPFamilyPolicy: &single,
			Selector: s.Selector, Ports: ports, SessionAffinity: corev1.ServiceAffinityNone}}
}

// selected lists the Kubernetes pods a service selects, as the endpoint controller would.
func (b kubeBuilder) selected(s svcDef) []podDef {
	var out []podDef
	if len(s.Selector) == 0 {
		return nil
	}
	for _, p := range b.pods {
		if p.Namespace != s.Namespace || p.NotInKube {
			continue
		}
		match := true
		for k, v := range s.Selector {
			if p.Labels[k] != v {
				match = false
			}
		}
		if match {
			out = append(out, p)
		}
	}
	return out
}

// endpointSlice is the slice the endpoint controller would write for s over the given pods
// (for a selector-less service, over s.Addresses without targetRef).
func (b kubeBuilder) endpointSlice(s svcDef, pods []podDef) *discoveryv1.EndpointSlice {
	var eps []discoveryv1.Endpoint
	for _, p := range pods {
		node := p.Node
		eps = append(eps, discoveryv1.Endpoint{
			Addresses:  []string{b.ip(p.Name)},
			Conditions: discoveryv1.EndpointConditions{Ready: boolp(true), Serving: boolp(true), Terminating: boolp(false)},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: uid("pod", p.Namespace, p.Name)},
		})
	}
	for _, a := range s.Addresses {
		eps = append(eps, discoveryv1.Endpoint{
			Addresses:  []string{b.ip(a)},
			Conditions: discoveryv1.EndpointConditions{Ready: boolp(true), Serving: boolp(true), Terminating: boolp(false)},
		})
	}
	var ports []discoveryv1.EndpointPort
	for _, p := range s.Ports {
		name, port, proto := p.Name, p.Target, p.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		ep := discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: &proto}
		if p.AppProtocol != "" {
			ap := p.AppProtocol
			ep.AppProtocol = &ap
		}
		ports = append(ports, ep)
	}
	return &discoveryv1.EndpointSlice{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{Name: s.Name + "-x7k2p", Namespace: s.Namespace, UID: uid("eps", s.Namespace, s.Name),
			Labels: map[string]string{discoveryv1.LabelServiceName: s.Name, discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Service", Name: s.Name, UID: uid("svc", s.Namespace, s.Name),
				Controller: boolp(true), BlockOwnerDeletion: boolp(true)}}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps, Ports: ports}
}

// waypoint is an ambient waypoint for the services of a namespace: its GatewayClass, the
// Gateway (with the status address istio's deployment controller writes once the waypoint's
// pod is ready) and its Service.
func waypointObjects(ns, name, vip string) []runtime.Object {
	ipType, hostType := gatewayv1.IPAddressType, gatewayv1.HostnameAddressType
	class := &gatewayv1.GatewayClass{TypeMeta: metav1.TypeMeta{APIVersion: "gateway.networking.k8s.io/v1", Kind: "GatewayClass"},
		ObjectMeta: metav1.ObjectMeta{Name: "istio-waypoint", Labels: map[string]string{"istio.io/waypoint-for": "service"}},
		Spec:       gatewayv1.GatewayClassSpec{ControllerName: "istio.io/mesh-controller"}}
	gw := &gatewayv1.Gateway{TypeMeta: metav1.TypeMeta{APIVersion: "gateway.networking.k8s.io/v1", Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"istio.io/waypoint-for": "service"}},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{Name: "mesh", Port: 15008, Protocol: "HBONE"}}},
		Status: gatewayv1.GatewayStatus{Addresses: []gatewayv1.GatewayStatusAddress{
			{Type: &ipType, Value: vip},
			{Type: &hostType, Value: name + "." + ns + ".svc.cluster.local"}}}}
	return []runtime.Object{class, gw}
}

// toYAML joins objects as a multi-document YAML stream (what FakeOptions.KubernetesObjectString
// parses: documents separated by "\n---\n").
func toYAML(t *testing.T, objs []runtime.Object) string {
	t.Helper()
	var docs []string
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(b))
	}
	return strings.Join(docs, "\n---\n")
}
