// Package probe measures whether connections survive a data plane restart. From inside a lab
// pod it holds long-lived keep-alive connections to a service VIP, each sending a request every
// interval on the same socket, while opening a steady stream of new connections; every outcome
// lands in a wall-clock-aligned time bucket so restarts recorded elsewhere can be laid over it.
// A failed long-lived connection is never silently replaced: it is recorded as lost, then a
// counted reconnect keeps the load going.
package probe

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SchemaVersion is the version of Result's JSON.
const SchemaVersion = 1

// Config is one probe run. Zero Path, Interval, MaxInFlight, Bucket and Timeout take the
// defaults below; LongLived and NewConnRate 0 turn that kind of traffic off.
type Config struct {
	Target      string        `json:"target"`        // host:port, the service VIP
	Path        string        `json:"path"`          // default "/"
	LongLived   int           `json:"long_lived"`    // connections held for the whole run
	Interval    time.Duration `json:"interval_ns"`   // between requests on a long-lived connection; default 20ms
	NewConnRate float64       `json:"new_conn_rate"` // new connections per second
	// MaxInFlight bounds new-connection attempts at once (default 256); an attempt due beyond it
	// is skipped and counted, which happens when dials hang.
	MaxInFlight int           `json:"max_in_flight"`
	Duration    time.Duration `json:"duration_ns"` // 0: until the context is cancelled
	Bucket      time.Duration `json:"bucket_ns"`   // timeline resolution; default 100ms
	// Timeout bounds one long-lived request, and a new connection's dial plus request; default 1s.
	Timeout time.Duration `json:"timeout_ns"`
	// OnStarted, if set, is called once every long-lived connection is established, before the
	// first request.
	OnStarted func() `json:"-"`
}

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Interval, 20*time.Millisecond)
	def(&c.Bucket, 100*time.Millisecond)
	def(&c.Timeout, time.Second)
	if c.Path == "" {
		c.Path = "/"
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 256
	}
	return c
}

// Validate reports every invalid field by its JSON name.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("probe config: %s: %s", field, fmt.Sprintf(format, a...)))
	}
	if host, port, err := net.SplitHostPort(c.Target); err != nil || host == "" {
		bad("target", "%q is not host:port", c.Target)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		bad("target", "port %q is not 1-65535", port)
	}
	if c.Path != "" && !strings.HasPrefix(c.Path, "/") {
		bad("path", "%q does not start with /", c.Path)
	}
	if c.LongLived < 0 {
		bad("long_lived", "%d is negative", c.LongLived)
	}
	if c.NewConnRate < 0 || math.IsNaN(c.NewConnRate) || math.IsInf(c.NewConnRate, 0) {
		bad("new_conn_rate", "%v is not a rate >= 0", c.NewConnRate)
	}
	if c.LongLived == 0 && c.NewConnRate == 0 {
		bad("long_lived, new_conn_rate", "both 0: nothing to probe")
	}
	if c.MaxInFlight < 0 {
		bad("max_in_flight", "%d is negative", c.MaxInFlight)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"interval_ns", c.Interval}, {"duration_ns", c.Duration}, {"bucket_ns", c.Bucket}, {"timeout_ns", c.Timeout}} {
		if d.v < 0 {
			bad(d.name, "%v is negative", d.v)
		}
	}
	if c.Bucket > 0 && c.Bucket < time.Millisecond {
		bad("bucket_ns", "%v is below 1ms", c.Bucket)
	}
	return errors.Join(errs...)
}

// Result is a whole run.
type Result struct {
	SchemaVersion int       `json:"schema_version"`
	Config        Config    `json:"config"` // with defaults applied
	Start         time.Time `json:"start"`  // bucket 0 starts here
	StartUnixNs   int64     `json:"start_unix_ns"`
	End           time.Time `json:"end"`
	Buckets       []Bucket  `json:"buckets"` // contiguous from Start, Config.Bucket wide
	Summary       Summary   `json:"summary"`
}

// Counts are shared by a bucket and the summary. A request is counted in the bucket in which it
// was sent, so a run of timeouts lines up with the outage, not Timeout later. A new connection
// is one request: a failed dial is a failed request and a connect error. A failed redial of a
// lost long-lived connection is only a connect error (no request was sent).
type Counts struct {
	RequestsOK      int64 `json:"requests_ok"`
	RequestsFailed  int64 `json:"requests_failed"`
	ConnectErrors   int64 `json:"connect_errors"`
	Resets          int64 `json:"resets"` // failures of class reset
	NewConnOK       int64 `json:"new_conn_ok"`
	NewConnFailed   int64 `json:"new_conn_failed"`
	NewConnSkipped  int64 `json:"new_conn_skipped"` // due with max_in_flight attempts pending
	LongLivedOK     int64 `json:"long_lived_ok"`
	LongLivedFailed int64 `json:"long_lived_failed"` // each one lost its connection
}

// Bucket is one slice of the timeline. Latencies are over its successful requests (new
// connections: dial + request), in microseconds; 0 without any.
type Bucket struct {
	StartUnixNs int64 `json:"start_unix_ns"`
	Counts
	P50Us        int64 `json:"p50_us"`
	P99Us        int64 `json:"p99_us"`
	NewConnP99Us int64 `json:"new_conn_p99_us"`
}

// Summary is the whole run.
type Summary struct {
	Counts
	LongLivedTotal     int `json:"long_lived_total"`     // connections opened at the start
	LongLivedSurviving int `json:"long_lived_surviving"` // of those, never lost
	LongLivedReconnect int `json:"long_lived_reconnects"`
	// LongLivedLost lists every loss, of original and replacement connections alike.
	LongLivedLost []LongConn `json:"long_lived_lost"`
	// LongLivedConnections lists every long-lived connection opened, originals first.
	LongLivedConnections []LongConn       `json:"long_lived_connections"`
	ErrorsByClass        map[string]int64 `json:"errors_by_class"` // reset, timeout, eof, refused, other
	Duration             time.Duration    `json:"duration_ns"`
}

// LongConn is one long-lived connection; the local address tells a replacement apart.
type LongConn struct {
	Conn           int    `json:"conn"` // slot 0..long_lived-1
	Gen            int    `json:"gen"`  // 0: opened at the start, n: nth replacement
	LocalAddr      string `json:"local_addr"`
	OpenedAtUnixNs int64  `json:"opened_at_unix_ns"`
	RequestsOK     int64  `json:"requests_ok"`
	LastSeq        uint64 `json:"last_seq"` // sequence numbers run on per slot across reconnects
	LostAtUnixNs   int64  `json:"lost_at_unix_ns,omitempty"`
	ErrorClass     string `json:"error_class,omitempty"`
	Error          string `json:"error,omitempty"`
}

// Run probes until cfg.Duration has passed or ctx is cancelled, then returns the result;
// outcomes still pending then are not counted. It fails only on an invalid config or when the
// long-lived connections cannot be opened.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	// Internal work is stopped on our own cancel, after the recorder has stopped counting, so
	// what the stop itself breaks is never counted as a failure.
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	p := &prober{cfg: cfg, ctx: inner}
	conns := make([]*LongConn, cfg.LongLived)
	clients := make([]*client, cfg.LongLived)
	for i := range conns {
		t0 := time.Now()
		cl, err := p.dial(t0.Add(cfg.Timeout))
		if err != nil {
			for _, c := range clients[:i] {
				c.close()
			}
			return nil, fmt.Errorf("probe: long-lived connection %d to %s: %w", i, cfg.Target, err)
		}
		clients[i], conns[i] = cl, &LongConn{Conn: i, LocalAddr: cl.LocalAddr().String(), OpenedAtUnixNs: t0.UnixNano()}
	}
	start := time.Now()
	p.rec = &recorder{start: start, width: cfg.Bucket, conns: conns, sum: Summary{ErrorsByClass: map[string]int64{}}}
	if cfg.Duration > 0 {
		p.rec.end = start.Add(cfg.Duration)
	}
	if cfg.OnStarted != nil {
		cfg.OnStarted()
	}
	for i := range conns {
		p.wg.Add(1)
		go p.longLived(conns[i], clients[i])
	}
	if cfg.NewConnRate > 0 {
		p.wg.Add(1)
		go p.newConns(start)
	}
	var end <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(time.Until(p.rec.end))
		defer t.Stop()
		end = t.C
	}
	select {
	case <-ctx.Done():
	case <-end:
	}
	stop := p.rec.stop()
	cancel()
	p.wg.Wait()
	return p.rec.result(cfg, stop), nil
}

type prober struct {
	cfg Config
	ctx context.Context // cancelled at the end of the run
	rec *recorder
	wg  sync.WaitGroup
}

// client is a connection with its response reader.
type client struct {
	net.Conn
	br     *bufio.Reader
	unhook func() bool
}

func (p *prober) dial(deadline time.Time) (*client, error) {
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(p.ctx, "tcp", p.cfg.Target)
	if err != nil {
		return nil, err
	}
	// Closing unblocks a request in flight at the end of the run.
	unhook := context.AfterFunc(p.ctx, func() { nc.Close() })
	return &client{Conn: nc, br: bufio.NewReader(nc), unhook: unhook}, nil
}

func (c *client) close() {
	c.unhook()
	c.Conn.Close()
}

// do sends req and reads the whole response, which must be a 200.
func (c *client) do(req []byte, deadline time.Time) error {
	c.SetDeadline(deadline)
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	return err
}

// request appends a GET carrying the sender and sequence number in the query, which shows up in
// server logs and packet captures.
func (p *prober) request(b []byte, kind string, id int, seq uint64, closeConn bool) []byte {
	sep := "?"
	if strings.Contains(p.cfg.Path, "?") {
		sep = "&"
	}
	b = append(b, "GET "+p.cfg.Path+sep+kind+"="...)
	b = strconv.AppendInt(b, int64(id), 10)
	b = append(b, "&seq="...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, " HTTP/1.1\r\nHost: "+p.cfg.Target+"\r\nUser-Agent: onehop-probe\r\n"...)
	if closeConn {
		b = append(b, "Connection: close\r\n"...)
	}
	return append(b, "\r\n"...)
}

// longLived drives one slot: a request every interval on the same connection; on failure the
// connection is recorded lost and replaced at once, the next request waiting for the next tick
// (so a peer that resets every connection does not make this spin).
func (p *prober) longLived(c *LongConn, cl *client) {
	defer p.wg.Done()
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	var buf []byte
	seq := uint64(0)
	for {
		if cl != nil {
			seq++
			c.LastSeq = seq
			buf = p.request(buf[:0], "conn", c.Conn, seq, false)
			t0 := time.Now()
			err := cl.do(buf, t0.Add(p.cfg.Timeout))
			if !p.rec.record(llRequest, t0, time.Since(t0), err, c) {
				cl.close()
				return
			}
			if err != nil {
				cl.close()
				cl = nil
			}
		}
		if cl == nil {
			t0 := time.Now()
			next := &LongConn{Conn: c.Conn, Gen: c.Gen + 1, OpenedAtUnixNs: t0.UnixNano(), LastSeq: seq}
			ncl, err := p.dial(t0.Add(p.cfg.Timeout))
			if err == nil {
				next.LocalAddr = ncl.LocalAddr().String()
			}
			if !p.rec.record(llDial, t0, 0, err, next) {
				if ncl != nil {
					ncl.close()
				}
				return
			}
			if err == nil {
				c, cl = next, ncl
			}
		}
		select {
		case <-p.ctx.Done():
			if cl != nil {
				cl.close()
			}
			return
		case <-t.C:
		}
	}
}

// newConns starts attempts at the configured rate. Each tick starts every attempt due by then,
// so late or dropped ticks do not lower the rate.
func (p *prober) newConns(start time.Time) {
	defer p.wg.Done()
	rate := p.cfg.NewConnRate
	t := time.NewTicker(max(time.Duration(float64(time.Second)/rate), time.Millisecond))
	defer t.Stop()
	sem := make(chan struct{}, p.cfg.MaxInFlight)
	for n := 0; ; {
		select {
		case <-p.ctx.Done():
			return
		case now := <-t.C:
			for due := int(now.Sub(start).Seconds() * rate); n < due; n++ {
				select {
				case sem <- struct{}{}:
					p.wg.Add(1)
					go p.newConn(n, sem)
				default:
					p.rec.record(ncSkipped, now, 0, nil, nil)
				}
			}
		}
	}
}

// newConn is one attempt: dial, one request with Connection: close, close.
func (p *prober) newConn(n int, sem chan struct{}) {
	defer func() { <-sem; p.wg.Done() }()
	t0 := time.Now()
	deadline := t0.Add(p.cfg.Timeout)
	cl, err := p.dial(deadline)
	if err != nil {
		p.rec.record(ncDial, t0, 0, err, nil)
		return
	}
	defer cl.close()
	err = cl.do(p.request(make([]byte, 0, 128), "new", n, 1, true), deadline)
	p.rec.record(ncRequest, t0, time.Since(t0), err, nil)
}

// classify names what broke: reset, timeout, eof, refused or other.
func classify(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	// EPIPE: writing after a reset (or after a FIN then a reset).
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return "reset"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "other"
}

type kind int

const (
	llRequest kind = iota // a request on a long-lived connection
	llDial                // a redial of a lost long-lived connection
	ncDial                // a failed dial of a new connection
	ncRequest             // a new connection's request
	ncSkipped             // a new connection not attempted: max_in_flight pending
)

// recorder collects outcomes into buckets and the summary under one lock: a few thousand
// events a second do not contend.
type recorder struct {
	mu      sync.Mutex
	start   time.Time
	width   time.Duration
	end     time.Time // start + Duration; zero when running until cancelled
	stopped bool
	buckets []acc
	conns   []*LongConn // written by their slot's goroutine, read once all have ended
	sum     Summary
}

type acc struct {
	Counts
	lat, ncLat []uint32 // microseconds of successful requests
}

// record counts one outcome in the bucket of at (when it was sent). c is the long-lived
// connection concerned: credited, marked lost, or (llDial) newly opened. It returns false once
// the run has stopped: the outcome was pending at the end and is dropped. So is one sent after
// start + Duration, which keeps the timeline exactly Duration long.
func (r *recorder) record(k kind, at time.Time, lat time.Duration, err error, c *LongConn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped || !r.end.IsZero() && !at.Before(r.end) {
		return false
	}
	i := max(int(at.Sub(r.start)/r.width), 0)
	if i >= len(r.buckets) {
		r.buckets = append(r.buckets, make([]acc, i+1-len(r.buckets))...)
	}
	b := &r.buckets[i]
	class := ""
	if err != nil {
		class = classify(err)
		r.sum.ErrorsByClass[class]++
	}
	for _, n := range []*Counts{&b.Counts, &r.sum.Counts} {
		if class == "reset" {
			n.Resets++
		}
		switch {
		case k == ncSkipped:
			n.NewConnSkipped++
		case k == llDial:
			if err != nil {
				n.ConnectErrors++
			}
		case k == ncDial:
			n.ConnectErrors++
			n.NewConnFailed++
			n.RequestsFailed++
		case err != nil:
			n.RequestsFailed++
			if k == ncRequest {
				n.NewConnFailed++
			} else {
				n.LongLivedFailed++
			}
		default:
			n.RequestsOK++
			if k == ncRequest {
				n.NewConnOK++
			} else {
				n.LongLivedOK++
			}
		}
	}
	switch {
	case k == llDial && err == nil:
		r.sum.LongLivedReconnect++
		r.conns = append(r.conns, c)
	case k == llRequest && err == nil:
		c.RequestsOK++
	case k == llRequest:
		c.LostAtUnixNs, c.ErrorClass, c.Error = time.Now().UnixNano(), class, err.Error()
		r.sum.LongLivedLost = append(r.sum.LongLivedLost, *c)
		slog.Warn("probe: long-lived connection lost", "conn", c.Conn, "gen", c.Gen, "local", c.LocalAddr, "seq", c.LastSeq, "class", class, "err", err)
	}
	if err == nil && (k == llRequest || k == ncRequest) {
		us := uint32(min(lat.Microseconds(), math.MaxUint32))
		b.lat = append(b.lat, us)
		if k == ncRequest {
			b.ncLat = append(b.ncLat, us)
		}
	}
	return true
}

func (r *recorder) stop() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	if now := time.Now(); r.end.IsZero() || now.Before(r.end) {
		return now
	}
	return r.end
}

// result is called once every goroutine has ended.
func (r *recorder) result(cfg Config, end time.Time) *Result {
	res := &Result{SchemaVersion: SchemaVersion, Config: cfg, Start: r.start, StartUnixNs: r.start.UnixNano(), End: end, Summary: r.sum}
	n := max(int((end.Sub(r.start)+r.width-1)/r.width), len(r.buckets))
	res.Buckets = make([]Bucket, n)
	for i := range res.Buckets {
		b := Bucket{StartUnixNs: r.start.Add(time.Duration(i) * r.width).UnixNano()}
		if i < len(r.buckets) {
			a := r.buckets[i]
			b.Counts = a.Counts
			b.P50Us, b.P99Us, b.NewConnP99Us = percentile(a.lat, 0.50), percentile(a.lat, 0.99), percentile(a.ncLat, 0.99)
		}
		res.Buckets[i] = b
	}
	s := &res.Summary
	s.LongLivedTotal = cfg.LongLived
	s.LongLivedConnections = make([]LongConn, len(r.conns))
	for i, c := range r.conns {
		s.LongLivedConnections[i] = *c
		if c.Gen == 0 && c.LostAtUnixNs == 0 {
			s.LongLivedSurviving++
		}
	}
	if s.LongLivedLost == nil {
		s.LongLivedLost = []LongConn{}
	}
	s.Duration = end.Sub(r.start)
	return res
}

// percentile is the nearest-rank q-quantile; it sorts v.
func percentile(v []uint32, q float64) int64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	return int64(v[int(math.Ceil(q*float64(len(v))))-1])
}
