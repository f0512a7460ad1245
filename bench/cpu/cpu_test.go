package cpu

import (
	"errors"
	"io/fs"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    HostCounters
		wantErr string
	}{
		{
			name: "linux 6 with guest fields",
			in: "cpu  4473 1 1576 43414 302 2 35 10 7 3\n" +
				"cpu0 2076 0 672 22154 16 0 11 3 0 0\n" +
				"intr 123 0 0\nctxt 456\n",
			want: HostCounters{User: 4473, Nice: 1, System: 1576, Idle: 43414, IOWait: 302, IRQ: 2, Softirq: 35, Steal: 10, Guest: 7, GuestNice: 3, CPUs: 1},
		},
		{
			name: "old kernel without guest, aggregate not first",
			in:   "btime 1\ncpu 1 2 3 4 5 6 7 8\n",
			want: HostCounters{User: 1, Nice: 2, System: 3, Idle: 4, IOWait: 5, IRQ: 6, Softirq: 7, Steal: 8},
		},
		{
			name: "future extra field ignored",
			in:   "cpu 1 2 3 4 5 6 7 8 9 10 11\n",
			want: HostCounters{User: 1, Nice: 2, System: 3, Idle: 4, IOWait: 5, IRQ: 6, Softirq: 7, Steal: 8, Guest: 9, GuestNice: 10},
		},
		{name: "too few fields", in: "cpu 1 2 3 4\n", wantErr: "want at least 8"},
		{name: "not a number", in: "cpu 1 2 x 4 5 6 7 8\n", wantErr: "value 3"},
		{name: "negative", in: "cpu 1 2 3 -4 5 6 7 8\n", wantErr: "value 4"},
		{name: "only per-cpu lines", in: "cpu0 1 2 3 4 5 6 7 8\n", wantErr: "no aggregate"},
		{name: "empty", in: "", wantErr: "no aggregate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseProcStat(strings.NewReader(tc.in))
			checkErr(t, err, tc.wantErr)
			if tc.wantErr == "" && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseCPUStat(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    CgroupCounters
		wantErr string
	}{
		{
			name: "no cpu controller (hybrid mode)",
			in:   "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
			want: CgroupCounters{1500, 1000, 500},
		},
		{
			name: "with cpu controller and core_sched",
			in: "usage_usec 9\nuser_usec 5\nsystem_usec 4\ncore_sched.force_idle_usec 0\n" +
				"nr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
			want: CgroupCounters{9, 5, 4},
		},
		{name: "cgroup v1 cpu.stat", in: "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n", wantErr: "missing usage_usec, user_usec, system_usec"},
		{name: "one key missing", in: "usage_usec 1\nuser_usec 1\n", wantErr: "missing system_usec"},
		{name: "bad value", in: "usage_usec 1x\nuser_usec 1\nsystem_usec 0\n", wantErr: "usage_usec"},
		{name: "no value", in: "usage_usec\n", wantErr: "malformed line"},
		{name: "empty", in: "", wantErr: "missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseCPUStat(strings.NewReader(tc.in))
			checkErr(t, err, tc.wantErr)
			if tc.wantErr == "" && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseCgroupRoot(t *testing.T) {
	const hybrid = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
`
	tests := []struct {
		name, in, want, wantErr string
	}{
		{name: "hybrid", in: hybrid, want: "/sys/fs/cgroup/unified"},
		{name: "unified", in: "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", want: "/sys/fs/cgroup"},
		{
			name: "preferred over earlier other mount",
			in:   "50 1 0:40 / /mnt/cg\\0402 rw - cgroup2 none rw\n30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			want: "/sys/fs/cgroup",
		},
		{name: "elsewhere, escaped", in: "50 1 0:40 / /mnt/cg\\0402 rw - cgroup2 none rw\n", want: "/mnt/cg 2"},
		{name: "v1 only", in: "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", wantErr: "no cgroup v2 mount"},
		{name: "malformed lines", in: "garbage\n1 2 3 4 5 6 -\n", wantErr: "mount -t cgroup2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCgroupRoot(strings.NewReader(tc.in))
			checkErr(t, err, tc.wantErr)
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestHostDelta(t *testing.T) {
	a := HostCounters{User: 100, Nice: 0, System: 50, Idle: 1000, IOWait: 20, IRQ: 1, Softirq: 5, Steal: 2, Guest: 40, CPUs: 2}
	b := HostCounters{User: 130, Nice: 1, System: 60, Idle: 1100, IOWait: 19, IRQ: 2, Softirq: 9, Steal: 3, Guest: 60, CPUs: 2}
	// 1 s on 2 CPUs = 2000 CPU-ms, of which 1000 idle: busy is 1000 whatever the ticks sampled.
	got := hostDelta(a, b, time.Second)
	want := HostUsage{UserMS: 300, NiceMS: 10, SystemMS: 100, IdleMS: 1000, IOWaitMS: 0, IRQMS: 10, SoftirqMS: 40, StealMS: 10,
		TickBusyMS: 470, BusyMS: 1000, CPUs: 2}
	if got != want {
		t.Errorf("got %+v\nwant %+v (guest must not be added, iowait going back clamps to 0)", got, want)
	}
}

func TestByComponentAndPerThousand(t *testing.T) {
	u := Usage{Cgroups: []CgroupUsage{
		{Target: Target{Name: "a", Component: "proxy"}, UsageMS: 10},
		{Target: Target{Name: "b", Component: "proxy"}, UsageMS: 5.5},
		{Target: Target{Name: "c", Component: "client"}, UsageMS: 2},
	}}
	got := u.ByComponent()
	if len(got) != 2 || got["proxy"] != 15.5 || got["client"] != 2 {
		t.Errorf("ByComponent = %v", got)
	}
	if got := PerThousand(250, 5000); got != 50 {
		t.Errorf("PerThousand(250, 5000) = %v, want 50", got)
	}
	if got := PerThousand(250, 0); got != 0 {
		t.Errorf("PerThousand(250, 0) = %v, want 0", got)
	}
}

func TestTargetErrorMessage(t *testing.T) {
	tgt := Target{Name: "fortio-client", Component: "client", Path: "/sys/fs/cgroup/unified/pod1"}
	err := error(&TargetError{Target: tgt, Err: &fs.PathError{Op: "open", Path: tgt.Path + "/cpu.stat", Err: syscall.ENOENT}})
	want := "cpu.stat of client fortio-client (/sys/fs/cgroup/unified/pod1): no such file or directory (cgroup removed during the window"
	if !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got %q, want prefix %q", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("errors.Is(err, fs.ErrNotExist) = false")
	}
}

func TestStopWithoutStart(t *testing.T) {
	if _, err := NewSampler(nil).Stop(); err == nil {
		t.Error("Stop without Start succeeded")
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}
