package keyturn_test

import (
	"context"
	"testing"
	"time"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// eventLog runs a watch in the background and hands its events to the test.
type eventLog struct {
	events chan *keyturnv1.ExpiryEvent
	done   chan error
}

func follow(ctx context.Context, seq func(func(*keyturnv1.ExpiryEvent, error) bool)) *eventLog {
	l := &eventLog{events: make(chan *keyturnv1.ExpiryEvent, 1024), done: make(chan error, 1)}
	go func() {
		for event, err := range seq {
			if err != nil {
				l.done <- err
				return
			}
			l.events <- event
		}
		l.done <- nil
	}()
	return l
}

// await returns the first event that matches, with every event seen on the way.
func (l *eventLog) await(t *testing.T, what string, match func(*keyturnv1.ExpiryEvent) bool) (*keyturnv1.ExpiryEvent, []*keyturnv1.ExpiryEvent) {
	t.Helper()
	var seen []*keyturnv1.ExpiryEvent
	timeout := time.After(60 * time.Second)
	for {
		select {
		case event := <-l.events:
			seen = append(seen, event)
			if match(event) {
				return event, seen
			}
		case err := <-l.done:
			t.Fatalf("watch ended while waiting for %s: %v", what, err)
		case <-timeout:
			t.Fatalf("no %s within 60 s", what)
		}
	}
}

func isKind(kind keyturnv1.EventKind) func(*keyturnv1.ExpiryEvent) bool {
	return func(e *keyturnv1.ExpiryEvent) bool { return e.GetKind() == kind }
}

func createdKey(id string) func(*keyturnv1.ExpiryEvent) bool {
	return func(e *keyturnv1.ExpiryEvent) bool {
		return e.GetKind() == keyturnv1.EventKind_EVENT_KIND_CREATED && e.GetKey().GetId() == id
	}
}

func TestKeyWatchSeesAKeyCreatedAfterTheSnapshot(t *testing.T) {
	c := liveClient(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	log := follow(ctx, c.Keys.Watch(ctx, &keyturnv1.WatchExpiringRequest{Types: []string{"encryption"}}))
	log.await(t, "SNAPSHOT_COMPLETE", isKind(keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE))

	key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "encryption"}))(t).GetKey()
	event, _ := log.await(t, "CREATED of "+key.GetId(), createdKey(key.GetId()))
	if event.GetSequence() <= 0 || event.GetKey().GetStatus() != keyturnv1.KeyStatus_KEY_STATUS_ACTIVE {
		t.Errorf("CREATED event = %v", event)
	}
}

func TestHandleWatchSeesRotationAndRevocationOfOneHandle(t *testing.T) {
	c := liveClient(t)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{Type: "session"}))(t)
	id := issued.GetHandle().GetId()
	log := follow(ctx, c.Handles.Watch(ctx, &keyturnv1.WatchExpiringRequest{Ids: []string{id}}))
	log.await(t, "SNAPSHOT_COMPLETE", isKind(keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE))

	must(c.Handles.RotateHandle(ctx, &keyturnv1.RotateHandleRequest{Target: &keyturnv1.RotateHandleRequest_HandleId{HandleId: id}}))(t)
	must(c.Handles.RemoveHandle(ctx, &keyturnv1.RemoveHandleRequest{HandleId: id, Reason: "test"}))(t)

	rotated, _ := log.await(t, "ROTATED", isKind(keyturnv1.EventKind_EVENT_KIND_ROTATED))
	revoked, _ := log.await(t, "REVOKED", isKind(keyturnv1.EventKind_EVENT_KIND_REVOKED))
	if rotated.GetHandle().GetId() != id || revoked.GetHandle().GetId() != id || revoked.GetSequence() != rotated.GetSequence()+1 {
		t.Errorf("ROTATED %v then REVOKED %v; want consecutive events of %s", rotated, revoked, id)
	}
}
