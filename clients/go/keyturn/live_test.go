package keyturn_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/keyturn/keyturn/clients/go/keyturn"
)

// liveClient connects to the server named by KEYTURN_ADDRESS with the admin
// token in KEYTURN_TOKEN (and any further options), or skips the test when no
// server is given.
func liveClient(t *testing.T, opts ...keyturn.Option) *keyturn.Client {
	t.Helper()
	addr := os.Getenv("KEYTURN_ADDRESS")
	if addr == "" {
		t.Skip("KEYTURN_ADDRESS is not set: this test needs a live Keyturn server " +
			"(export KEYTURN_ADDRESS=host:port and KEYTURN_TOKEN=<admin token>, or run clients/go/run-tests.sh)")
	}
	client, err := keyturn.NewClient(addr, append([]keyturn.Option{keyturn.WithToken(os.Getenv("KEYTURN_TOKEN"))}, opts...)...)
	if err != nil {
		t.Fatalf("NewClient(%s): %v", addr, err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// testContext is a context bounded well below go test's own timeout.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// must(call())(t) fails the test when the call failed and otherwise returns
// its result.
func must[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}
