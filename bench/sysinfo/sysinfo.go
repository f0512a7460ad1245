// Package sysinfo records the environment a result was measured in, so every figure in a report
// can be traced to the machine, kernel, tool versions and source revision that produced it.
package sysinfo

// Environment describes the machine and software of one run.
type Environment struct {
	Hostname      string            `json:"hostname"`
	Kernel        string            `json:"kernel"`         // uname -r
	KernelVersion string            `json:"kernel_version"` // uname -v
	Arch          string            `json:"arch"`
	OS            string            `json:"os"` // PRETTY_NAME from /etc/os-release
	CPUModel      string            `json:"cpu_model"`
	Cores         int               `json:"cores"`
	MemoryBytes   uint64            `json:"memory_bytes"`
	GoVersion     string            `json:"go_version"`
	Modules       map[string]string `json:"modules"` // Go module versions built in (fortio, ...)
	Tools         map[string]string `json:"tools"`   // external tools' versions (iptables, ip, ...)
	GitRevision   string            `json:"git_revision"`
	GitDirty      bool              `json:"git_dirty"`
}
