package keyturn

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// DefaultTimeout is the deadline of a unary call whose context has none,
// retries included (see WithDefaultTimeout).
const DefaultTimeout = 30 * time.Second

// Backoff is exponential backoff with full jitter: before retry n (0 for the
// first) the wait is drawn at random from [0, min(Max, Initial×Multiplier^n)),
// so that clients cut off together do not come back in step.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
}

// Cap is the longest wait before retry n (0 for the first).
func (b Backoff) Cap(retry int) time.Duration {
	ceiling := max(b.Max, b.Initial)
	c := float64(b.Initial)
	for i := 0; i < retry && c < float64(ceiling); i++ {
		c *= max(b.Multiplier, 1)
	}
	return time.Duration(min(c, float64(ceiling)))
}

// Delay is the wait before retry n for a random draw in [0, 1).
func (b Backoff) Delay(retry int, draw float64) time.Duration {
	return time.Duration(draw * float64(b.Cap(retry)))
}

// RetryPolicy says how calls that the API marks idempotent are retried.
type RetryPolicy struct {
	Backoff Backoff
	// MaxAttempts caps the attempts, the first included; 0 leaves it to the
	// call's deadline alone, and 1 turns retries off.
	MaxAttempts int
}

// DefaultRetryPolicy is the policy of every Keyturn client: waits below
// 100 ms doubling to 5 s, until the call's deadline.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{Backoff: Backoff{Initial: 100 * time.Millisecond, Max: 5 * time.Second, Multiplier: 2}}
}

// DefaultWatchBackoff is the reconnect backoff of a watch: waits below 1 s
// doubling to 30 s.
func DefaultWatchBackoff() Backoff {
	return Backoff{Initial: time.Second, Max: 30 * time.Second, Multiplier: 2}
}

// DefaultKeepalive is the keepalive of every client's connection: with a
// call open, a ping after 60 s without a frame from the server, and the
// connection closed when the ping goes unanswered for 20 s. A watch on a
// connection that went silent (the server's host gone, a partition) then
// reconnects instead of waiting forever. Replace it with
// WithDialOptions(grpc.WithKeepaliveParams(...)).
func DefaultKeepalive() keepalive.ClientParameters {
	return keepalive.ClientParameters{Time: 60 * time.Second, Timeout: 20 * time.Second}
}

// retryable holds the full names of the methods whose idempotency_level,
// read from the generated descriptors, is NO_SIDE_EFFECTS or IDEMPOTENT.
var retryable = retryableMethods(
	keyturnv1.File_keyturn_v1_keys_proto,
	keyturnv1.File_keyturn_v1_handles_proto,
	keyturnv1.File_keyturn_v1_admin_proto,
)

func retryableMethods(files ...protoreflect.FileDescriptor) map[string]bool {
	found := map[string]bool{}
	for _, file := range files {
		for i := range file.Services().Len() {
			service := file.Services().Get(i)
			for j := range service.Methods().Len() {
				method := service.Methods().Get(j)
				options, _ := method.Options().(*descriptorpb.MethodOptions)
				switch options.GetIdempotencyLevel() {
				case descriptorpb.MethodOptions_NO_SIDE_EFFECTS, descriptorpb.MethodOptions_IDEMPOTENT:
					found["/"+string(service.FullName())+"/"+string(method.Name())] = true
				}
			}
		}
	}
	return found
}

// Retryable reports whether failed attempts of the method (a full name such
// as keyturnv1.KeyService_GetKey_FullMethodName) are sent again: whether the
// API marks it NO_SIDE_EFFECTS or IDEMPOTENT.
func Retryable(fullMethod string) bool { return retryable[fullMethod] }

// retryInfo is the wait a google.rpc.RetryInfo in err's details asks for.
func retryInfo(err error) (time.Duration, bool) {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

// retried reports whether a retryable call that failed with err is tried
// again (UNAVAILABLE; RESOURCE_EXHAUSTED with a RetryInfo, a rate limit
// rather than a quota), and the least wait the server asked for.
func retried(err error) (time.Duration, bool) {
	floor, asked := retryInfo(err)
	switch status.Code(err) {
	case codes.Unavailable:
		return floor, true
	case codes.ResourceExhausted:
		return floor, asked
	}
	return 0, false
}

// defaultDeadline gives a unary call whose context has no deadline one of
// timeout, fixed before the first attempt so that retries share it.
func defaultDeadline(timeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		if _, ok := ctx.Deadline(); !ok && timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// retrying is the unary interceptor that applies a RetryPolicy. Each attempt
// runs under the call's context, so it carries only the time that remains;
// when the next wait would end past the deadline, the last error is returned
// at once, and a wait cut short by the client's Close (closing) ends the call
// with CANCELED.
func retrying(p RetryPolicy, draw func() float64, closing <-chan struct{}) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if !retryable[method] {
			return err
		}
		deadline, bounded := ctx.Deadline()
		for attempt := 1; err != nil && (p.MaxAttempts <= 0 || attempt < p.MaxAttempts); attempt++ {
			floor, ok := retried(err)
			if !ok {
				return err
			}
			wait := max(p.Backoff.Delay(attempt-1, draw()), floor)
			if bounded && time.Until(deadline) <= wait {
				return err
			}
			if closed, done := pause(ctx, wait, closing); closed {
				return errClientClosed()
			} else if done {
				return err
			}
			err = invoker(ctx, method, req, reply, cc, opts...)
		}
		return err
	}
}

// pause waits d, or less: until ctx is done (done) or closing is closed (closed).
func pause(ctx context.Context, d time.Duration, closing <-chan struct{}) (closed, done bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false, ctx.Err() != nil
	case <-ctx.Done():
		return false, true
	case <-closing: // nil (never ready) without a Client
		return true, false
	}
}

// jitter is the source of the random draws of backoffs.
func jitter() float64 { return rand.Float64() }
