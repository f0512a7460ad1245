// Package workloadapi holds the Go types of Istio's ambient "workload API" (the
// istio.workload.Address resources that istiod serves to ztunnel and Kmesh over Delta ADS),
// generated from a trimmed, wire-compatible copy of Istio's workload.proto (workload.proto
// here; see its header). The proto package is onehop.workloadapi, not istio.workload, so that
// these types and Istio's own generated ones can be linked into one binary.
package workloadapi

// TypeURL is the type URL of the workload API's resources on the wire: Istio's name for
// Address, istio.workload.Address, not this package's onehop.workloadapi.Address. Control
// planes (istiod) subscribe, send and pack Any resources under Istio's name; the bytes decode
// into Address here because the field numbers and types are Istio's. Do not use
// anypb.New(&Address{...}) to build a resource for the wire: it would name this package's
// message. Set the Any's TypeUrl to TypeURL instead.
const TypeURL = "type.googleapis.com/istio.workload.Address"
