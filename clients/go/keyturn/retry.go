package keyturn

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// RetryPolicy says how idempotent unary calls are retried after UNAVAILABLE.
// Calls that change state (Generate*, Rotate*, Remove*, ValidateHandle, which
// counts a use, ...) are never retried: the first attempt may have landed.
type RetryPolicy struct {
	// MaxAttempts counts the first try; 1 (or less) disables retries.
	MaxAttempts int
	// InitialBackoff is the wait before the second attempt; each later wait
	// is Multiplier times longer, capped at MaxBackoff, with jitter.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
}

// DefaultRetryPolicy is used unless WithRetryPolicy says otherwise.
var DefaultRetryPolicy = RetryPolicy{
	MaxAttempts:    4,
	InitialBackoff: 200 * time.Millisecond,
	MaxBackoff:     2 * time.Second,
	Multiplier:     2,
}

// idempotent lists the unary methods that read, or compute without changing
// any state but usage counters, and so are safe to send twice.
var idempotent = map[string]bool{
	keyturnv1.KeyService_GetKey_FullMethodName:                 true,
	keyturnv1.KeyService_ListKeys_FullMethodName:               true,
	keyturnv1.KeyService_GetKeyStatistics_FullMethodName:       true,
	keyturnv1.KeyService_Encrypt_FullMethodName:                true,
	keyturnv1.KeyService_Decrypt_FullMethodName:                true,
	keyturnv1.KeyService_Sign_FullMethodName:                   true,
	keyturnv1.KeyService_Verify_FullMethodName:                 true,
	keyturnv1.KeyService_GetPublicKey_FullMethodName:           true,
	keyturnv1.KeyService_ComputeMac_FullMethodName:             true,
	keyturnv1.KeyService_VerifyMac_FullMethodName:              true,
	keyturnv1.HandleService_GetHandle_FullMethodName:           true,
	keyturnv1.HandleService_ListHandles_FullMethodName:         true,
	keyturnv1.HandleService_GetHandleStatistics_FullMethodName: true,
	keyturnv1.AdminService_GetHealth_FullMethodName:            true,
	keyturnv1.AdminService_GetConfig_FullMethodName:            true,
	keyturnv1.AdminService_ListAuditEvents_FullMethodName:      true,
	keyturnv1.AdminService_VerifyAuditLog_FullMethodName:       true,
	keyturnv1.AdminService_ListAccessTokens_FullMethodName:     true,
	healthpb.Health_Check_FullMethodName:                       true,
}

// IsIdempotent reports whether the unary method (a full name such as
// keyturnv1.KeyService_GetKey_FullMethodName) is retried after UNAVAILABLE.
func IsIdempotent(fullMethod string) bool { return idempotent[fullMethod] }

// retryUnavailable is the unary interceptor that applies a RetryPolicy.
func retryUnavailable(p RetryPolicy) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
		invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
	) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if !idempotent[method] {
			return err
		}
		backoff := p.InitialBackoff
		for attempt := 1; attempt < p.MaxAttempts && status.Code(err) == codes.Unavailable; attempt++ {
			if sleepErr := sleep(ctx, jitter(backoff)); sleepErr != nil {
				return err
			}
			backoff = p.next(backoff)
			err = invoker(ctx, method, req, reply, cc, opts...)
		}
		return err
	}
}

func (p RetryPolicy) next(d time.Duration) time.Duration {
	m := p.Multiplier
	if m < 1 {
		m = 1
	}
	d = time.Duration(float64(d) * m)
	if p.MaxBackoff > 0 && d > p.MaxBackoff {
		d = p.MaxBackoff
	}
	return d
}

// jitter spreads retries of many clients over [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
