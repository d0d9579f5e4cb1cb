package publisher_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/tevyra/m365-worker/jobs"
	"github.com/tevyra/m365-worker/publisher"
	"github.com/tevyra/m365-worker/worker/workertest"
)

func TestPublishAllInOrderWithBackPressure(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	p := publisher.New(js, publisher.Config{MaxPending: 4})
	var msgs []publisher.Message
	for i := 0; i < 200; i++ {
		msgs = append(msgs, publisher.Message{Subject: "m365.results.acme.indicators", MsgID: fmt.Sprintf("m-%d", i), Value: map[string]int{"n": i}})
	}
	if err := p.PublishAll(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	// Again: every message is a duplicate, nothing is stored twice.
	if err := p.PublishAll(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	got := workertest.Decode[map[string]int](t, workertest.Messages(t, js, "M365_RESULTS", "m365.results.acme.indicators"))
	if len(got) != 200 {
		t.Fatalf("%d messages stored, want 200", len(got))
	}
	for i, m := range got {
		if m["n"] != i {
			t.Fatalf("message %d is %d: out of order", i, m["n"])
		}
	}
}

func TestPublishFailureIsReported(t *testing.T) {
	srv := workertest.Start(t)
	_, js := srv.Connect(t)
	p := publisher.New(js, publisher.Config{MaxElapsed: 1})
	err := p.ActionResult(context.Background(), &jobs.ActionResult{JobID: "j", Instance: "acme", Action: jobs.ActionSync})
	if err != nil {
		t.Fatalf("a stored result: %v", err)
	}
	_, err = p.Publish(context.Background(), publisher.Message{Subject: "nowhere.at.all", MsgID: "x", Value: 1})
	if !errors.Is(err, publisher.ErrPublish) {
		t.Fatalf("publish to a subject no stream holds: %v", err)
	}
	if _, err := p.Publish(context.Background(), publisher.Message{Subject: "m365.results.acme.actions", Value: 1}); !errors.Is(err, publisher.ErrPublish) {
		t.Fatalf("publish without a message id: %v", err)
	}
}

// A message that reaches a listener which never acknowledges it (not a
// stream: here a plain subscriber) must not hang PublishAll: the async path
// has no timeout of its own, so the wait is bounded and the resend fails.
func TestPublishAllDoesNotHangWithoutAnAck(t *testing.T) {
	srv := workertest.Start(t)
	nc, js := srv.Connect(t)
	sub, err := nc.SubscribeSync("silent.listener")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	p := publisher.New(js, publisher.Config{AckTimeout: 200 * time.Millisecond, MaxElapsed: time.Second})
	done := make(chan error, 1)
	go func() {
		done <- p.PublishAll(context.Background(), []publisher.Message{{Subject: "silent.listener", MsgID: "s-1", Value: 1}})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, publisher.ErrPublish) {
			t.Fatalf("PublishAll to a listener that never acks: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("PublishAll hung on a message nobody acknowledged")
	}
}
