package bench

// StartupRun is one new pod's start-up through a variant's data plane (claim C8): from the
// moment the lab starts creating the pod to its first successful request through a service VIP.
type StartupRun struct {
	Variant    string `json:"variant"`
	Pod        string `json:"pod"`
	Repetition int    `json:"repetition"`
	// FirstSuccessMS is pod creation start to the first HTTP 200 through the VIP.
	FirstSuccessMS float64 `json:"first_success_ms"`
	// CreateMS is the lab's own pod creation (netns, veth, cgroup): the same work for every
	// variant. OnboardMS is the variant's part (inject a sidecar, enroll, capture).
	CreateMS  float64 `json:"create_ms"`
	OnboardMS float64 `json:"onboard_ms"`
	// Attempts is how many requests the new pod made until the first success.
	Attempts int    `json:"attempts"`
	Error    string `json:"error,omitempty"`
}
