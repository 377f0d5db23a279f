package loraplex

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// 32 goroutines submit at once; odd ones cancel right away, even ones stream to the end, while
// others read models/stats/metrics. Every request must end exactly once with a sane reason.
func TestConcurrentSubmitAndCancel(t *testing.T) {
	e := newTestEngine(t, nil)
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			req := greedy(fmt.Sprintf("request %d", i), 6)
			if i%2 == 1 {
				req.MaxTokens = 2000
			}
			id, err := e.Submit(req)
			if err != nil {
				errs <- fmt.Errorf("submit %d: %w", i, err)
				return
			}
			if i%2 == 1 {
				if err := e.Cancel(id); err != nil {
					errs <- fmt.Errorf("cancel %d: %w", i, err)
					return
				}
			}
			finals, tokens := 0, 0
			var reason FinishReason
			err = e.Stream(context.Background(), id, func(o *Output) error {
				tokens += len(o.TokenIDs())
				if o.IsFinal() {
					finals++
					reason = o.FinishReason()
				}
				return nil
			})
			switch {
			case err != nil:
				errs <- fmt.Errorf("stream %d: %w", i, err)
			case finals != 1:
				errs <- fmt.Errorf("request %d: %d final outputs", i, finals)
			case i%2 == 0 && (reason != FinishLength || tokens != 6):
				errs <- fmt.Errorf("request %d: reason %v after %d tokens, want length after 6", i, reason, tokens)
			case i%2 == 1 && reason != FinishCancelled:
				errs <- fmt.Errorf("cancelled request %d: reason %v", i, reason)
			}
		}(i)
	}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				if _, err := e.ModelsJSON(); err != nil {
					errs <- err
				}
				if _, err := e.StatsJSON(); err != nil {
					errs <- err
				}
				if _, err := e.MetricsText(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Close while goroutines are submitting and polling: each call either works or returns
// ErrClosed; nothing crashes and Close returns.
func TestCloseWhileBusy(t *testing.T) {
	e := newTestEngine(t, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	start := make(chan struct{})
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			<-start
			for {
				id, err := e.Submit(greedy("busy", 50))
				if err != nil {
					if !errors.Is(err, ErrClosed) {
						errs <- err
					}
					return
				}
				err = e.Stream(context.Background(), id, func(*Output) error { return nil })
				if err != nil && !errors.Is(err, ErrClosed) {
					errs <- err
					return
				}
			}
		}(i)
	}
	close(start)
	time.Sleep(100 * time.Millisecond)
	done := make(chan struct{})
	go func() { e.Close(); e.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Close did not return within 30 s")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
