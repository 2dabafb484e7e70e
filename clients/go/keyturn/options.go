package keyturn

import (
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
)

// Option configures NewClient.
type Option func(*settings)

type settings struct {
	token       string
	tlsConfig   *tls.Config
	plaintext   bool
	retry       RetryPolicy
	timeout     time.Duration
	dialOptions []grpc.DialOption
}

// settingsFor applies opts to the defaults for target: plaintext for a
// loopback target, TLS for any other.
func settingsFor(target string, opts ...Option) settings {
	s := settings{retry: DefaultRetryPolicy(), timeout: DefaultTimeout, plaintext: isLoopback(target)}
	for _, opt := range opts {
		opt(&s)
	}
	return s
}

// WithToken sends "authorization: Bearer <token>" with every call. Over
// plaintext the token is sent only to loopback addresses, unless
// WithPlaintext was chosen explicitly.
func WithToken(token string) Option {
	return func(s *settings) { s.token = token }
}

// WithTLS connects over TLS with the given configuration (nil: system roots,
// server name from the address); set RootCAs for a private CA, Certificates
// for mutual TLS and ServerName when it differs from the address. TLS is the
// default for non-loopback addresses.
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

// WithRetryPolicy replaces DefaultRetryPolicy for the calls the API marks
// idempotent; RetryPolicy{MaxAttempts: 1} disables retries.
func WithRetryPolicy(p RetryPolicy) Option {
	return func(s *settings) { s.retry = p }
}

// WithDefaultTimeout sets the deadline of unary calls whose context has none
// (DefaultTimeout unless set; 0: none). It covers all of a call's attempts.
func WithDefaultTimeout(d time.Duration) Option {
	return func(s *settings) { s.timeout = d }
}

// WithDialOptions passes extra options to grpc.NewClient (after Keyturn's own).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, opts...) }
}
