package probe

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestFirstSuccessWaitsForTheServer: while nothing listens, attempts fail and are retried; the
// first success comes after the server appears.
func TestFirstSuccessWaitsForTheServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens: connections are refused
	start := time.Now()
	go func() {
		time.Sleep(300 * time.Millisecond)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})}
		t.Cleanup(func() { srv.Close() })
		srv.Serve(l)
	}()
	at, n, err := FirstSuccess(context.Background(), addr, "/", 5*time.Millisecond, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d := at.Sub(start); d < 300*time.Millisecond || n < 5 {
		t.Errorf("first success after %v and %d attempts; want after the server started (300ms) and several refused attempts", d, n)
	}
	if _, _, err := FirstSuccess(context.Background(), "127.0.0.1:1", "/", 5*time.Millisecond, 100*time.Millisecond); err == nil {
		t.Error("FirstSuccess to a closed port succeeded")
	}
}
