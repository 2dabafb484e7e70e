package keyturn_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

// connection is what one scripted stream sends: its events, then end (an
// error, or io.EOF for a clean end), or nothing more at all while its
// connection stays up (silent: a stuck server). openErr fails the open itself.
type connection struct {
	events  []*keyturnv1.ExpiryEvent
	end     error
	silent  bool
	openErr error
}

// scriptedServer plays one connection per WatchExpiring call and records the
// requests, so tests see what the watch asked for when it reconnected.
type scriptedServer struct {
	connections []connection
	requests    []*keyturnv1.WatchExpiringRequest
}

func (s *scriptedServer) open(ctx context.Context, req *keyturnv1.WatchExpiringRequest,
	_ ...grpc.CallOption,
) (grpc.ServerStreamingClient[keyturnv1.ExpiryEvent], error) {
	s.requests = append(s.requests, req)
	if len(s.connections) == 0 {
		return nil, status.Error(codes.Internal, "script exhausted")
	}
	c := s.connections[0]
	s.connections = s.connections[1:]
	if c.openErr != nil {
		return nil, c.openErr
	}
	return &scriptedStream{ctx: ctx, connection: c}, nil
}

type scriptedStream struct {
	grpc.ClientStream
	ctx        context.Context
	connection connection
}

func (s *scriptedStream) Recv() (*keyturnv1.ExpiryEvent, error) {
	if err := s.ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	if len(s.connection.events) == 0 {
		if s.connection.silent {
			<-s.ctx.Done()
			return nil, status.FromContextError(s.ctx.Err()).Err()
		}
		return nil, s.connection.end
	}
	event := s.connection.events[0]
	s.connection.events = s.connection.events[1:]
	return event, nil
}

func created(sequence int64) *keyturnv1.ExpiryEvent {
	return &keyturnv1.ExpiryEvent{Sequence: sequence, Kind: keyturnv1.EventKind_EVENT_KIND_CREATED}
}

func marker(kind keyturnv1.EventKind, latest int64) *keyturnv1.ExpiryEvent {
	return &keyturnv1.ExpiryEvent{Kind: kind, LatestSequence: latest}
}

var (
	snapshotItem = &keyturnv1.ExpiryEvent{Kind: keyturnv1.EventKind_EVENT_KIND_EXPIRING, Snapshot: true}
	unavailable  = status.Error(codes.Unavailable, "server restarting")
	instant      = keyturn.WithWatchBackoff(keyturn.Backoff{Initial: time.Microsecond, Max: time.Microsecond, Multiplier: 2})
)

// describe renders delivered events as "snapshot", "complete@10", "11"...
func describe(events []*keyturnv1.ExpiryEvent) string {
	var parts []string
	for _, e := range events {
		switch {
		case e.GetSnapshot():
			parts = append(parts, "snapshot")
		case e.GetKind() == keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE:
			parts = append(parts, fmt.Sprintf("complete@%d", e.GetLatestSequence()))
		case e.GetKind() == keyturnv1.EventKind_EVENT_KIND_HEARTBEAT:
			parts = append(parts, fmt.Sprintf("heartbeat@%d", e.GetLatestSequence()))
		default:
			parts = append(parts, fmt.Sprint(e.GetSequence()))
		}
	}
	return strings.Join(parts, " ")
}

// collect runs a watch to its end, returning what it yielded and its final error.
func collect(t *testing.T, seq func(func(*keyturnv1.ExpiryEvent, error) bool)) ([]*keyturnv1.ExpiryEvent, error) {
	t.Helper()
	var events []*keyturnv1.ExpiryEvent
	for event, err := range seq {
		if err != nil {
			return events, err
		}
		events = append(events, event)
	}
	t.Fatal("watch ended without an error")
	return nil, nil
}

func resumePoints(requests []*keyturnv1.WatchExpiringRequest) []string {
	var points []string
	for _, r := range requests {
		if r.ResumeAfter == nil {
			points = append(points, "none")
		} else {
			points = append(points, fmt.Sprint(r.GetResumeAfter()))
		}
	}
	return points
}

func TestWatchResumesAfterTheLastSequenceAndDropsReplays(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{events: []*keyturnv1.ExpiryEvent{snapshotItem, marker(keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE, 10), created(11), created(12)}, end: unavailable},
		{events: []*keyturnv1.ExpiryEvent{created(12), created(13), marker(keyturnv1.EventKind_EVENT_KIND_HEARTBEAT, 20)}, end: io.EOF},
		{events: []*keyturnv1.ExpiryEvent{created(21)}, end: status.Error(codes.PermissionDenied, "token revoked")},
	}}
	request := &keyturnv1.WatchExpiringRequest{Types: []string{"encryption"}}

	events, err := collect(t, keyturn.WatchExpiring(testContext(t), server.open, request, instant))

	if got, want := describe(events), "snapshot complete@10 11 12 13 21"; got != want {
		t.Errorf("delivered %q, want %q", got, want)
	}
	if keyturn.CodeOf(err) != codes.PermissionDenied {
		t.Errorf("final error = %v, want PERMISSION_DENIED", err)
	}
	if got, want := resumePoints(server.requests), []string{"none", "12", "20"}; !slices.Equal(got, want) {
		t.Errorf("resume_after per connection = %v, want %v", got, want)
	}
	if server.requests[2].GetTypes()[0] != "encryption" || request.ResumeAfter != nil {
		t.Error("filters were lost, or the caller's request was changed")
	}
}

func TestWatchStartsFromTheRequestedResumePoint(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{events: []*keyturnv1.ExpiryEvent{created(5), created(6)}, end: status.Error(codes.OutOfRange, "too old")},
	}}
	resume := int64(4)
	events, err := collect(t, keyturn.WatchExpiring(testContext(t), server.open,
		&keyturnv1.WatchExpiringRequest{ResumeAfter: &resume}, instant, keyturn.WithHeartbeats()))

	if describe(events) != "5 6" || keyturn.CodeOf(err) != codes.OutOfRange {
		t.Errorf("delivered %q then %v", describe(events), err)
	}
	if got := resumePoints(server.requests); !slices.Equal(got, []string{"4"}) {
		t.Errorf("resume_after = %v, want [4]", got)
	}
}

func TestWatchBackoffDoublesToItsCapAndResetsAfterAMessage(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{openErr: unavailable},
		{end: unavailable},
		{end: unavailable},
		{end: unavailable},
		{events: []*keyturnv1.ExpiryEvent{marker(keyturnv1.EventKind_EVENT_KIND_HEARTBEAT, 3)}, end: status.Error(codes.Aborted, "overflow")},
		{end: unavailable},
		{end: status.Error(codes.Unauthenticated, "no token")},
	}}
	var waits []time.Duration
	hook := keyturn.WithReconnectHook(func(_ error, wait time.Duration) { waits = append(waits, wait) })

	_, err := collect(t, keyturn.WatchExpiring(testContext(t), server.open, nil,
		keyturn.WithWatchBackoff(keyturn.Backoff{Initial: time.Millisecond, Max: 4 * time.Millisecond, Multiplier: 2}),
		keyturn.WithDraw(func() float64 { return 1 }), hook))

	ms := time.Millisecond
	if want := []time.Duration{ms, 2 * ms, 4 * ms, 4 * ms, ms, 2 * ms}; !slices.Equal(waits, want) {
		t.Errorf("waits = %v, want %v", waits, want)
	}
	if keyturn.CodeOf(err) != codes.Unauthenticated {
		t.Errorf("final error = %v, want UNAUTHENTICATED", err)
	}
}

func TestWatchStopsWhenTheCallerBreaksOrCancels(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{events: []*keyturnv1.ExpiryEvent{created(1), created(2)}, end: unavailable},
	}}
	for range keyturn.WatchExpiring(testContext(t), server.open, nil, instant) {
		break
	}
	if len(server.requests) != 1 {
		t.Errorf("watch opened %d streams after break, want 1", len(server.requests))
	}

	ctx, cancel := context.WithCancel(testContext(t))
	server = &scriptedServer{connections: []connection{{end: unavailable}, {end: unavailable}}}
	hook := keyturn.WithReconnectHook(func(error, time.Duration) { cancel() })
	_, err := collect(t, keyturn.WatchExpiring(ctx, server.open, nil, keyturn.WithWatchBackoff(keyturn.Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2}), keyturn.WithDraw(func() float64 { return 1 }), hook))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("final error after cancel = %v, want context.Canceled", err)
	}
}

func TestWatchReconnectsAfterACancelledItDidNotCause(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{events: []*keyturnv1.ExpiryEvent{created(1)}, end: status.Error(codes.Canceled, "stream reset by a proxy")},
		{events: []*keyturnv1.ExpiryEvent{created(2)}, end: status.Error(codes.PermissionDenied, "end of script")},
	}}
	events, err := collect(t, keyturn.WatchExpiring(testContext(t), server.open, nil, instant))

	if describe(events) != "1 2" || keyturn.CodeOf(err) != codes.PermissionDenied {
		t.Errorf("delivered %q then %v, want 1 2 then PERMISSION_DENIED", describe(events), err)
	}
}

func TestWatchWaitsAtLeastWhatRetryInfoAsks(t *testing.T) {
	limited := must(status.New(codes.ResourceExhausted, "too many streams").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(7 * time.Second)}))(t).Err()
	server := &scriptedServer{connections: []connection{
		{end: limited},
		{end: status.Error(codes.PermissionDenied, "end of script")},
	}}
	var waits []time.Duration
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	hook := keyturn.WithReconnectHook(func(_ error, wait time.Duration) {
		waits = append(waits, wait)
		cancel() // the wait is the point, not sleeping it
	})
	_, _ = collect(t, keyturn.WatchExpiring(ctx, server.open, nil, instant, hook))

	if len(waits) != 1 || waits[0] < 7*time.Second {
		t.Errorf("waits = %v; want one of at least the 7 s RetryInfo asked for", waits)
	}
}

func TestWatchOnAClosedClientEnds(t *testing.T) {
	_, addr := serveFlaky(t, 0)
	c := must(keyturn.NewClient(addr))(t)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	opens := 0
	hook := keyturn.WithReconnectHook(func(error, time.Duration) { opens++ })

	_, err := collect(t, c.Keys.Watch(testContext(t), nil, instant, hook))

	if keyturn.CodeOf(err) != codes.Canceled {
		t.Errorf("watch on a closed client ended with %v, want CANCELED", err)
	}
	if opens > 0 {
		t.Errorf("watch on a closed client reconnected %d times, want 0", opens)
	}
}

func TestWatchOfAClientClosedWhileItWaitsToReconnectEndsAtOnce(t *testing.T) {
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	addr := lis.Addr().String()
	lis.Close() // nothing listens there: every attempt fails and the watch waits
	c := must(keyturn.NewClient(addr))(t)
	waiting := make(chan struct{})
	var once sync.Once
	hour := keyturn.WithWatchBackoff(keyturn.Backoff{Initial: time.Hour, Max: time.Hour, Multiplier: 2})
	hook := keyturn.WithReconnectHook(func(error, time.Duration) { once.Do(func() { close(waiting) }) })
	ended := make(chan error, 1)
	go func() {
		_, err := collect(t, c.Keys.Watch(testContext(t), nil, hour, keyturn.WithDraw(func() float64 { return 1 }), hook))
		ended <- err
	}()

	<-waiting
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if keyturn.CodeOf(err) != codes.Canceled {
			t.Errorf("watch of a closed client ended with %v, want CANCELED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the watch still waits out its hour-long backoff after its client closed")
	}
}

// beating is a SNAPSHOT_COMPLETE that says heartbeats come every interval.
func beating(latest int64, interval time.Duration) *keyturnv1.ExpiryEvent {
	complete := marker(keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE, latest)
	complete.HeartbeatInterval = durationpb.New(interval)
	return complete
}

// quick is the policy's silence, faster: 3 heartbeats of 50 ms, at least 200 ms.
var quick = keyturn.WithWatchSilence(keyturn.Silence{Heartbeats: 3, Floor: 200 * time.Millisecond})

func TestWatchSilenceIsThreeHeartbeatsAndNeverUnderFiveSeconds(t *testing.T) {
	for interval, want := range map[time.Duration]time.Duration{
		0:                      0, // not said: no limit
		100 * time.Millisecond: 5 * time.Second,
		time.Second:            5 * time.Second,
		2 * time.Second:        6 * time.Second,
		30 * time.Second:       90 * time.Second,
	} {
		if got := keyturn.DefaultWatchSilence().Limit(interval); got != want {
			t.Errorf("Limit(%v) = %v, want %v", interval, got, want)
		}
	}
}

func TestWatchGivesUpAStreamSilentPastItsHeartbeatsAndResumes(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{events: []*keyturnv1.ExpiryEvent{beating(10, 50*time.Millisecond), created(11)}, silent: true},
		{silent: true}, // resumed: no SNAPSHOT_COMPLETE, and a stuck server says nothing
		{events: []*keyturnv1.ExpiryEvent{created(12)}, end: status.Error(codes.PermissionDenied, "end of script")},
	}}
	var reasons []string
	hook := keyturn.WithReconnectHook(func(err error, _ time.Duration) {
		var e *keyturn.Error
		if errors.As(err, &e) && e.Code == codes.Unavailable {
			reasons = append(reasons, e.Reason)
		}
	})
	events, err := collect(t, keyturn.WatchExpiring(testContext(t), server.open, nil, instant, quick, hook))

	if describe(events) != "complete@10 11 12" || keyturn.CodeOf(err) != codes.PermissionDenied {
		t.Errorf("delivered %q then %v, want complete@10 11 12 then PERMISSION_DENIED", describe(events), err)
	}
	if got := strings.Join(resumePoints(server.requests), " "); got != "none 11 11" {
		t.Errorf("resume points %s, want none 11 11", got)
	}
	if !slices.Equal(reasons, []string{"HEARTBEAT_MISSED", "HEARTBEAT_MISSED"}) {
		t.Errorf("reconnects told %v, want HEARTBEAT_MISSED twice", reasons)
	}
}

func TestWatchWaitsForAServerThatDoesNotSayHowOftenItBeats(t *testing.T) {
	server := &scriptedServer{connections: []connection{
		{events: []*keyturnv1.ExpiryEvent{marker(keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE, 10)}, silent: true},
	}}
	ctx, cancel := context.WithTimeout(testContext(t), time.Second)
	defer cancel()
	events, err := collect(t, keyturn.WatchExpiring(ctx, server.open, nil, instant, quick))

	if describe(events) != "complete@10" || !errors.Is(err, context.DeadlineExceeded) || len(server.requests) != 1 {
		t.Errorf("delivered %q then %v after %d streams; want complete@10, then the caller's deadline, one stream",
			describe(events), err, len(server.requests))
	}
}
