package keyturn_test

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

func TestWatchDeliversEveryEventOnceAcrossServerRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a server: skipped in -short mode")
	}
	server := startOwnServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	watcher := server.client()
	defer watcher.Close()

	var reconnects atomic.Int32
	hook := keyturn.WithReconnectHook(func(err error, wait time.Duration) {
		reconnects.Add(1)
		t.Logf("watch reconnects in %v after: %v", wait, err)
	})
	log := follow(ctx, watcher.Keys.Watch(ctx, &keyturnv1.WatchExpiringRequest{}, hook))
	complete, seen := log.await(t, "SNAPSHOT_COMPLETE", isKind(keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE))

	// newKey generates a key over a fresh connection and waits for its event.
	newKey := func() {
		t.Helper()
		c := server.client()
		defer c.Close()
		key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "encryption"}))(t).GetKey()
		_, more := log.await(t, "CREATED of "+key.GetId(), createdKey(key.GetId()))
		seen = append(seen, more...)
	}

	newKey()
	// A crash: the stream breaks without a goodbye. The key made right after
	// the restart is committed while the watch is still backing off, so it
	// reaches the watch through the resumed replay.
	server.restart(syscall.SIGKILL)
	newKey()
	newKey()
	// A graceful stop: the server drains the stream and ends it.
	server.restart(syscall.SIGTERM)
	newKey()

	cancel()
	if reconnects.Load() < 2 {
		t.Errorf("watch reconnected %d times, want at least 2", reconnects.Load())
	}
	next := complete.GetLatestSequence() + 1
	for _, event := range seen {
		if event.GetSequence() == 0 {
			continue
		}
		if event.GetSequence() != next {
			t.Errorf("event sequence %d (%v), want %d: events must be consecutive, without duplicates", event.GetSequence(), event.GetKind(), next)
		}
		next = event.GetSequence() + 1
	}
	if delivered := next - complete.GetLatestSequence() - 1; delivered != 4 {
		t.Errorf("watch delivered %d sequenced events, want the 4 CREATED", delivered)
	}
}
