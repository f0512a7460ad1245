package agent

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestStatusAndReadiness: /readyz and /status follow the readiness and status the agent reports.
func TestStatusAndReadiness(t *testing.T) {
	var ready atomic.Bool
	srv := &Server{Ready: ready.Load, Healthy: func() error { return nil }, Registry: prometheus.NewRegistry(),
		Log: slog.New(slog.DiscardHandler), Status: func() any { return map[string]int{"services": 3} },
		Config:   func() any { return map[string]string{"mode": "envoy"} },
		Services: func() any { return []map[string]string{{"service": "10.96.0.1:80", "issue": "rejected"}} }}
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "complete xDS config") {
		t.Errorf("/readyz before ready = %d %q", code, body)
	}
	ready.Store(true)
	if code, _ := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz when ready = %d", code)
	}
	code, body := get("/status")
	var st struct {
		Ready      bool           `json:"ready"`
		Programmed map[string]int `json:"programmed"`
	}
	if err := json.Unmarshal([]byte(body), &st); code != http.StatusOK || err != nil || !st.Ready || st.Programmed["services"] != 3 {
		t.Errorf("/status = %d %q (%v)", code, body, err)
	}
	if !strings.Contains(body, `"xds":{"mode":"envoy"}`) {
		t.Errorf("/status = %q, want the control plane side under xds", body)
	}
	if code, body := get("/services"); code != http.StatusOK || !strings.Contains(body, `"service":"10.96.0.1:80"`) {
		t.Errorf("/services = %d %q", code, body)
	}
	if code, body := get("/enroll"); code != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Errorf("GET /enroll with nothing enrolled = %d %q", code, body)
	}
	resp, err := http.Post(ts.URL+"/enroll", "application/json", strings.NewReader(`{"netns": ""}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("POST /enroll without a netns = %d, want 400", resp.StatusCode)
	}
}
