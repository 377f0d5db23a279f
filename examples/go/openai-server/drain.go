package main

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// replica is the server's life cycle as a replica behind a router or a Kubernetes Service:
// live while the process runs, ready once the model is loaded and until a drain starts; while
// draining, new generation requests get 503 with Retry-After and requests in flight finish.
// Safe for concurrent use.
type replica struct {
	draining atomic.Bool
	// inflight counts generation requests being served (active: the same count, readable).
	inflight sync.WaitGroup
	active   atomic.Int64
	// refused counts generation requests answered 503 because of the drain.
	refused atomic.Int64
	mu      sync.Mutex
}

// drainReport is what a drain did: whether every request in flight finished within the timeout,
// how many were in flight when it started, and how many new ones it refused meanwhile.
type drainReport struct {
	finished bool
	inFlight int64
	refused  int64
}

func (d drainReport) String() string {
	return fmt.Sprintf("%d requests in flight at the signal, %d new requests refused with 503",
		d.inFlight, d.refused)
}

// retryAfterDraining is the Retry-After of a 503 while draining: the router should send the
// request to another replica now; this one will not take it again.
const retryAfterDraining = 1

// admit registers a generation request, or answers 503 when draining (done is then nil).
func (rp *replica) admit(w http.ResponseWriter) (done func()) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.draining.Load() {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterDraining))
		writeError(w, http.StatusServiceUnavailable, "server_error", "draining",
			"this replica is draining (shutting down): retry on another replica")
		rp.refused.Add(1)
		return nil
	}
	rp.inflight.Add(1)
	rp.active.Add(1)
	return func() {
		rp.active.Add(-1)
		rp.inflight.Done()
	}
}

// drain stops taking generation requests and waits until those in flight finish or timeout
// elapses; reports whether they all finished, how many there were and how many it refused.
func (rp *replica) drain(timeout time.Duration) drainReport {
	rp.mu.Lock()
	rp.draining.Store(true)
	inFlight := rp.active.Load()
	rp.mu.Unlock()
	report := func(finished bool) drainReport {
		return drainReport{finished: finished, inFlight: inFlight, refused: rp.refused.Load()}
	}
	done := make(chan struct{})
	go func() {
		rp.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
		return report(true)
	case <-time.After(timeout):
		return report(false)
	}
}

// live answers NIM's /v1/health/live: 200 while the process serves HTTP.
func (s *server) live(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"status":"live"}`))
}

// ready answers NIM's /v1/health/ready: 200 once the engine answers and while not draining,
// 503 otherwise (a router or Kubernetes then sends traffic elsewhere).
func (s *server) ready(w http.ResponseWriter, r *http.Request) {
	if s.replica.draining.Load() {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterDraining))
		writeError(w, http.StatusServiceUnavailable, "server_error", "draining", "this replica is draining")
		return
	}
	if _, err := s.engine.StatsJSON(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "server_error", "not_ready", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"status":"ready"}`))
}

// shutdown drains s (up to drainTimeout for requests in flight), then closes srv's listeners and
// idle connections (waiting at most a further second for handlers that are still writing).
func shutdown(s *server, srv *http.Server, drainTimeout time.Duration) drainReport {
	report := s.replica.drain(drainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	// Requests refused during the final shutdown count too.
	report.refused = s.replica.refused.Load()
	return report
}
