package keyturn

import (
	"crypto/tls"

	"google.golang.org/grpc"
)

// Option configures Dial.
type Option func(*settings)

type settings struct {
	token       string
	tlsConfig   *tls.Config
	plaintext   bool
	retry       RetryPolicy
	lazy        bool
	dialOptions []grpc.DialOption
}

func defaultSettings() settings {
	return settings{retry: DefaultRetryPolicy}
}

// WithToken sends "authorization: Bearer <token>" with every call. Over
// plaintext the token is sent only to loopback addresses, unless
// WithPlaintext was chosen explicitly.
func WithToken(token string) Option {
	return func(s *settings) { s.token = token }
}

// WithTLS connects over TLS with the given configuration (nil: system roots,
// server name from the address). It is the default for non-loopback addresses.
func WithTLS(cfg *tls.Config) Option {
	return func(s *settings) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.tlsConfig, s.plaintext = cfg, false
	}
}

// WithPlaintext connects without TLS to any address. It is the default for
// loopback addresses (127.0.0.0/8, ::1, localhost, unix sockets).
func WithPlaintext() Option {
	return func(s *settings) { s.tlsConfig, s.plaintext = nil, true }
}

// WithRetryPolicy replaces DefaultRetryPolicy for idempotent unary calls;
// RetryPolicy{MaxAttempts: 1} disables retries.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(s *settings) { s.retry = p }
}

// WithLazyConnect makes Dial return at once instead of first checking that
// the server answers; calls then connect on demand.
func WithLazyConnect() Option {
	return func(s *settings) { s.lazy = true }
}

// WithDialOptions passes extra options to grpc.NewClient (after Keyturn's own).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, opts...) }
}
