// Package istiod tests the real onehop-agent binary against istiod's own configuration and xDS
// generators (istio.io/istio/pilot/test/xds): a fake Kubernetes API built from a network
// namespace lab (clusters/netns), istiod's generators serving it on a real gRPC listener, the
// agent connected to it as a sidecar (Envoy xDS, SotW or Delta) or as a node proxy (the ambient
// workload API), and real processes in a lab pod connecting to the services' VIPs.
//
// It is a module of its own, so the main module does not depend on Istio. Run it as root
// (`make test-istiod` does, with the agent `make build` built):
//
//	cd interop/istiod && go test -count=1 -timeout 20m ./...
//
// -short skips the push-to-programmed figure (TestPushToProgrammed); -v shows the xDS istiod
// generates, the agent's /status per fixture and the figure; -istiod.yaml logs the Kubernetes
// objects given to istio's fake; -istiod.log-level sets istiod's logging (default warn). A lab
// left behind by a killed run (a test timeout panics past the cleanups) is removed by the next
// run.
package istiod
