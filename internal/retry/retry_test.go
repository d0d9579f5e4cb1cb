package retry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDoStopsOnSuccessPermanentAndTries(t *testing.T) {
	ctx := context.Background()
	quick := Policy{Initial: time.Millisecond, Max: time.Millisecond, Tries: 4}
	calls := 0
	if err := Do(ctx, quick, func() error {
		calls++
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || calls != 3 {
		t.Fatalf("success on the 3rd call: err %v after %d calls", err, calls)
	}
	calls = 0
	boom := errors.New("boom")
	if err := Do(ctx, quick, func() error { calls++; return Permanent(boom) }); !errors.Is(err, boom) || calls != 1 {
		t.Fatalf("permanent: err %v after %d calls", err, calls)
	}
	calls = 0
	if err := Do(ctx, quick, func() error { calls++; return boom }); !errors.Is(err, boom) || calls != 4 {
		t.Fatalf("tries: err %v after %d calls, want 4", err, calls)
	}
}

func TestDoEndsWithTheContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := Do(ctx, UntilCancelled, func() error {
		calls++
		if calls == 2 {
			cancel()
		}
		return errors.New("down")
	})
	if !errors.Is(err, context.Canceled) || calls != 2 {
		t.Fatalf("err %v after %d calls", err, calls)
	}
}

func TestDelayDoublesUpToMax(t *testing.T) {
	p := Policy{Initial: 2 * time.Second, Max: 5 * time.Minute}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second}
	for i, w := range want {
		if got := p.Delay(i + 1); got != w {
			t.Errorf("Delay(%d) = %s, want %s", i+1, got, w)
		}
	}
	if got := p.Delay(20); got != 5*time.Minute {
		t.Errorf("Delay(20) = %s", got)
	}
}
