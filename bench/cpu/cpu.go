// Package cpu samples CPU time during a measurement window: per cgroup v2 leaf (one per pod or
// lab component) from cpu.stat, and for the whole host from /proc/stat. Host softirq time is kept
// apart because in-kernel data plane work (iptables NAT, eBPF, veth and bridge forwarding) is
// charged there and to no container.
package cpu

// Target is one cgroup v2 directory to sample.
type Target struct {
	Name      string `json:"name"`      // pod or component name
	Component string `json:"component"` // role used to aggregate: client, server, proxy, agent, ...
	Node      string `json:"node,omitempty"`
	Path      string `json:"-"` // absolute cgroup v2 directory
}

// Usage is the CPU spent during one window.
type Usage struct {
	WindowSeconds float64       `json:"window_seconds"`
	Host          HostUsage     `json:"host"`
	Cgroups       []CgroupUsage `json:"cgroups"`
}

// HostUsage is the /proc/stat delta summed over all CPUs, in CPU-milliseconds.
type HostUsage struct {
	UserMS    float64 `json:"user_ms"`
	NiceMS    float64 `json:"nice_ms"`
	SystemMS  float64 `json:"system_ms"`
	IdleMS    float64 `json:"idle_ms"`
	IOWaitMS  float64 `json:"iowait_ms"`
	IRQMS     float64 `json:"irq_ms"`
	SoftirqMS float64 `json:"softirq_ms"`
	StealMS   float64 `json:"steal_ms"`
	// BusyMS is window x CPUs - idle - iowait (see hostDelta for why not the tick sum).
	BusyMS     float64 `json:"busy_ms"`
	TickBusyMS float64 `json:"tick_busy_ms"` // user+nice+system+irq+softirq+steal as sampled at ticks
	CPUs       int     `json:"cpus"`
}

// CgroupUsage is the cpu.stat delta of one target, in CPU-milliseconds.
type CgroupUsage struct {
	Target
	UsageMS  float64 `json:"usage_ms"`
	UserMS   float64 `json:"user_ms"`
	SystemMS float64 `json:"system_ms"`
}
