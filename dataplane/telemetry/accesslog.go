package telemetry

import (
	"bufio"
	"io"
	"sync"
	"time"
)

// LogWriter buffers access log lines and writes them out every interval (as Envoy flushes its
// access log files every second): a write per line, four lines per short connection, would cost
// a system call each in bursts as events are read. Close writes out the rest. An agent killed
// with SIGKILL loses at most the last interval's lines.
type LogWriter struct {
	mu   sync.Mutex
	w    *bufio.Writer
	stop chan struct{}
	done chan struct{}
}

// NewLogWriter starts a LogWriter on w.
func NewLogWriter(w io.Writer, interval time.Duration) *LogWriter {
	l := &LogWriter{w: bufio.NewWriterSize(w, 256<<10), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-tick.C:
				l.Flush()
			}
		}
	}()
	return l
}

// Write buffers p (slog's handlers write one record per call).
func (l *LogWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Flush writes out what is buffered.
func (l *LogWriter) Flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Flush()
}

// Close stops the periodic writes and writes out the rest.
func (l *LogWriter) Close() error {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
	return l.Flush()
}
