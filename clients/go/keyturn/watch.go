package keyturn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/protobuf/proto"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// Opener opens one WatchExpiring stream; KeyServiceClient.WatchExpiring and
// HandleServiceClient.WatchExpiring are Openers.
type Opener func(ctx context.Context, req *keyturnv1.WatchExpiringRequest,
	opts ...grpc.CallOption) (grpc.ServerStreamingClient[keyturnv1.ExpiryEvent], error)

// WatchOption configures WatchExpiring.
type WatchOption func(*watchSettings)

type watchSettings struct {
	backoff     Backoff
	silence     Silence
	heartbeats  bool
	onReconnect func(err error, wait time.Duration)
	// closed reports whether the client was closed (a CANCELED then ends
	// the watch rather than reconnecting it).
	closed func() bool
	// closing is closed with the client: a wait to reconnect ends there.
	closing <-chan struct{}
	draw    func() float64
}

// WithWatchBackoff replaces the reconnect backoff (DefaultWatchBackoff).
func WithWatchBackoff(b Backoff) WatchOption {
	return func(s *watchSettings) { s.backoff = b }
}

// Silence is how long a watch waits for the next message of any kind once
// the server said how often it sends heartbeats (heartbeat_interval on
// HEARTBEAT and SNAPSHOT_COMPLETE): Heartbeats intervals, never less than
// Floor. A server whose event loop is stuck still answers HTTP/2 pings, so
// keepalive never notices it; its silence does.
type Silence struct {
	Heartbeats float64
	Floor      time.Duration
}

// DefaultWatchSilence gives a stream up after three heartbeat intervals
// without a message, and never before 5 s.
func DefaultWatchSilence() Silence {
	return Silence{Heartbeats: 3, Floor: 5 * time.Second}
}

// Limit is how long a stream may stay silent when heartbeats come every
// interval; 0 (no limit) when the interval is unknown.
func (s Silence) Limit(interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	return max(s.Floor, time.Duration(s.Heartbeats*float64(interval)))
}

// WithWatchSilence replaces how long a stream may stay silent
// (DefaultWatchSilence).
func WithWatchSilence(s Silence) WatchOption {
	return func(w *watchSettings) { w.silence = s }
}

// WithHeartbeats also delivers EVENT_KIND_HEARTBEAT events, whose
// latest_sequence an idle subscriber can store as its resume point.
func WithHeartbeats() WatchOption {
	return func(s *watchSettings) { s.heartbeats = true }
}

// WithReconnectHook calls fn with the error that ended a stream and the wait
// before the next attempt, each time the watch is about to reconnect.
func WithReconnectHook(fn func(err error, wait time.Duration)) WatchOption {
	return func(s *watchSettings) { s.onReconnect = fn }
}

// watchEndsOn are the codes that end a watch for good: another try would fail
// the same way. Every other failure, and a clean end of stream, reconnects.
var watchEndsOn = map[codes.Code]bool{
	codes.InvalidArgument:    true,
	codes.NotFound:           true,
	codes.AlreadyExists:      true,
	codes.PermissionDenied:   true,
	codes.Unauthenticated:    true,
	codes.FailedPrecondition: true,
	codes.OutOfRange:         true, // resume point older than the retention
	codes.Unimplemented:      true,
	codes.DataLoss:           true,
}

// Watch follows KeyService.WatchExpiring, reconnecting by itself; see WatchExpiring.
func (k *Keys) Watch(ctx context.Context, req *keyturnv1.WatchExpiringRequest, opts ...WatchOption) iter.Seq2[*keyturnv1.ExpiryEvent, error] {
	return WatchExpiring(ctx, wakeFirst(k.conn, k.WatchExpiring), req, append(opts, endsWith(k.conn, k.closing))...)
}

// Watch follows HandleService.WatchExpiring, reconnecting by itself; see WatchExpiring.
func (h *Handles) Watch(ctx context.Context, req *keyturnv1.WatchExpiringRequest, opts ...WatchOption) iter.Seq2[*keyturnv1.ExpiryEvent, error] {
	return WatchExpiring(ctx, wakeFirst(h.conn, h.WatchExpiring), req, append(opts, endsWith(h.conn, h.closing))...)
}

// endsWith ends a watch once conn is closed: its streams then fail with
// CANCELED, which from a live connection would mean a reset to recover from,
// and a wait to reconnect ends when closing is closed (by Client.Close).
func endsWith(conn *grpc.ClientConn, closing <-chan struct{}) WatchOption {
	return func(s *watchSettings) {
		if conn != nil {
			s.closed = func() bool { return conn.GetState() == connectivity.Shutdown }
		}
		s.closing = closing
	}
}

// wakeFirst makes the channel try to connect at once before each stream: the
// watch's own backoff (at most 30 s) decides when to reconnect, not the
// channel's (which grows to 120 s while the server is down).
func wakeFirst(conn *grpc.ClientConn, open Opener) Opener {
	if conn == nil {
		return open
	}
	return func(ctx context.Context, req *keyturnv1.WatchExpiringRequest,
		opts ...grpc.CallOption,
	) (grpc.ServerStreamingClient[keyturnv1.ExpiryEvent], error) {
		conn.ResetConnectBackoff()
		return open(ctx, req, opts...)
	}
}

// WatchExpiring follows a WatchExpiring stream across disconnections and
// server restarts, yielding each event exactly once and in order.
//
// Without req.ResumeAfter the stream starts with the snapshot of items inside
// their warning window (sequence 0, snapshot=true) and EVENT_KIND_SNAPSHOT_COMPLETE;
// live events follow. After a failure it reconnects with resume_after set to
// the last sequence seen (an event's sequence, or the latest_sequence of a
// heartbeat or SNAPSHOT_COMPLETE), after a wait drawn below a cap of 1 s
// doubling up to 30 s (full jitter), at least as long as a RetryInfo asks; the
// cap starts again from 1 s once a stream has delivered a message. Should a
// stream fail before its snapshot completes, the next one resends the snapshot.
// Once the server said how often it sends heartbeats, a stream that brings no
// message at all for three intervals (at least 5 s; WithWatchSilence) is
// cancelled and resumed the same way, with an UNAVAILABLE *Error (reason
// HEARTBEAT_MISSED) for the reconnect hook: the server is stuck though its
// connection answers pings. A server that does not say is waited for.
//
// Heartbeats are consumed unless WithHeartbeats is given. The sequence ends
// after the caller breaks out of the loop, or after yielding a final error:
// ctx's error; an *Error with a code another try cannot fix
// (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
// UNAUTHENTICATED, FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED,
// DATA_LOSS); or CANCELED once the Client is closed. Other failures
// (UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED, INTERNAL, a CANCELED the caller
// did not cause...) and a clean end of stream reconnect.
func WatchExpiring(ctx context.Context, open Opener, req *keyturnv1.WatchExpiringRequest, opts ...WatchOption) iter.Seq2[*keyturnv1.ExpiryEvent, error] {
	s := watchSettings{backoff: DefaultWatchBackoff(), silence: DefaultWatchSilence(), closed: func() bool { return false }, draw: jitter}
	for _, opt := range opts {
		opt(&s)
	}
	req = cloneOrNew(req)
	return func(yield func(*keyturnv1.ExpiryEvent, error) bool) {
		w := &watcher{settings: s, open: open, request: req}
		if req.ResumeAfter != nil {
			w.last, w.positioned = req.GetResumeAfter(), true
		}
		w.run(ctx, yield)
	}
}

// watcher holds the resume point of one WatchExpiring iteration.
type watcher struct {
	settings watchSettings
	open     Opener
	request  *keyturnv1.WatchExpiringRequest
	// last is the sequence to resume after, valid once positioned.
	last       int64
	positioned bool
	// interval is the server's heartbeat interval, once it said (kept across
	// reconnects: a resumed stream says it only with its first heartbeat).
	interval time.Duration
}

func (w *watcher) run(ctx context.Context, yield func(*keyturnv1.ExpiryEvent, error) bool) {
	retry := 0
	for {
		received, stopped, err := w.follow(ctx, yield)
		if stopped {
			return
		}
		if ctx.Err() != nil {
			yield(nil, ctx.Err())
			return
		}
		if err != nil && (watchEndsOn[CodeOf(err)] || w.settings.closed()) {
			yield(nil, err)
			return
		}
		if received {
			retry = 0
		}
		floor, _ := retryInfo(err)
		wait := max(w.settings.backoff.Delay(retry, w.settings.draw()), floor)
		retry++
		if w.settings.onReconnect != nil {
			w.settings.onReconnect(err, wait)
		}
		if err := w.pause(ctx, wait); err != nil {
			yield(nil, err)
			return
		}
	}
}

// errClientClosed ends a call or a watch whose client closed while it waited
// for its next attempt: a new *Error each time, since callers may change theirs.
func errClientClosed() error {
	return &Error{Code: codes.Canceled, Message: "the client was closed"}
}

// pause waits d before the next stream, or less: ctx's error when it is done,
// errClientClosed() when the client closes meanwhile.
func (w *watcher) pause(ctx context.Context, d time.Duration) error {
	switch closed, done := pause(ctx, d, w.settings.closing); {
	case closed:
		return errClientClosed()
	case done:
		return ctx.Err()
	}
	return nil
}

// follow reads one stream until it fails or the caller stops (stopped). A
// stream the server ends cleanly (io.EOF, e.g. on shutdown) returns a nil error.
func (w *watcher) follow(ctx context.Context, yield func(*keyturnv1.ExpiryEvent, error) bool) (received, stopped bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := proto.CloneOf(w.request)
	if w.positioned {
		req.ResumeAfter = proto.Int64(w.last)
	}
	// The watchdog ends a stream that stays silent past its heartbeats; it
	// runs only while waiting for the server, never while the caller holds
	// an event.
	var silent atomic.Bool
	watchdog := time.AfterFunc(time.Hour, func() { silent.Store(true); cancel() })
	watchdog.Stop()
	defer watchdog.Stop()
	stream, err := w.open(ctx, req)
	if err != nil {
		return false, false, err
	}
	for {
		limit := w.settings.silence.Limit(w.interval)
		if limit > 0 {
			watchdog.Reset(limit)
		}
		event, err := stream.Recv()
		watchdog.Stop()
		if err != nil && silent.Load() {
			return received, false, &Error{
				Code:   codes.Unavailable,
				Reason: "HEARTBEAT_MISSED",
				Message: fmt.Sprintf("no message from the server in %v (it sends a heartbeat every %v): "+
					"giving up on the stream", limit, w.interval),
			}
		}
		if errors.Is(err, io.EOF) {
			return received, false, nil
		}
		if err != nil {
			return received, false, err
		}
		received = true
		if w.accept(event) && !yield(event, nil) {
			return received, true, nil
		}
	}
}

// accept moves the resume point past event and says whether to deliver it.
// A sequenced event at or before the resume point was delivered already.
func (w *watcher) accept(event *keyturnv1.ExpiryEvent) bool {
	switch {
	case event.GetSequence() > 0:
		if w.positioned && event.GetSequence() <= w.last {
			return false
		}
		w.last, w.positioned = event.GetSequence(), true
		return true
	case event.GetKind() == keyturnv1.EventKind_EVENT_KIND_HEARTBEAT:
		w.advance(event)
		return w.settings.heartbeats
	case event.GetKind() == keyturnv1.EventKind_EVENT_KIND_SNAPSHOT_COMPLETE:
		w.advance(event)
		return true
	default: // a snapshot item
		return true
	}
}

// advance takes a HEARTBEAT's or SNAPSHOT_COMPLETE's latest sequence and
// heartbeat interval (none: a server that does not say, waited for).
func (w *watcher) advance(marker *keyturnv1.ExpiryEvent) {
	if sequence := marker.GetLatestSequence(); !w.positioned || sequence > w.last {
		w.last, w.positioned = sequence, true
	}
	w.interval = marker.GetHeartbeatInterval().AsDuration()
}
