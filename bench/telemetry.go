package bench

// TelemetryView is what the data plane's own telemetry said of a scenario's traffic, read with
// PromQL from a Prometheus that scraped the node agents throughout, beside fortio's counts of
// the same traffic.
type TelemetryView struct {
	Prometheus string `json:"prometheus"` // version and what it scraped
	// Services: one per variant service that carried load; Agree is false if any row disagrees.
	Services []ServiceTelemetry `json:"services"`
	Agree    bool               `json:"agree"`
}

// ServiceTelemetry is one destination service: connections and bytes as the agents' metrics
// count them (istio_tcp_*, by reporter: source is the client's side, destination the server's)
// and as fortio counted them (measured runs and warm-ups).
type ServiceTelemetry struct {
	Variant string `json:"variant"`
	Service string `json:"service"` // namespace/name
	// TelemetryOn is false for a variant whose pods are enrolled without telemetry: it must
	// have no series at all.
	TelemetryOn bool `json:"telemetry_on"`

	SourceOpened        float64 `json:"source_opened"`
	SourceClosed        float64 `json:"source_closed"`
	SourceSentBytes     float64 `json:"source_sent_bytes"`
	SourceReceivedBytes float64 `json:"source_received_bytes"`
	DestOpened          float64 `json:"destination_opened"`
	DestClosed          float64 `json:"destination_closed"`
	DestSentBytes       float64 `json:"destination_sent_bytes"`
	DestReceivedBytes   float64 `json:"destination_received_bytes"`

	// Fortio's counts include the one request per connection it makes before each run.
	FortioConnections   int64 `json:"fortio_connections"`
	FortioRequests      int64 `json:"fortio_requests"`
	FortioResponseBytes int64 `json:"fortio_response_bytes"`

	// Disagreements say which counts differ; empty when all agree.
	Disagreements []string `json:"disagreements,omitempty"`
}
