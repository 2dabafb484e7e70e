package keyturn

// WithDraw pins the random draw of a watch's backoff, so that tests can read
// its waits exactly.
func WithDraw(draw func() float64) WatchOption {
	return func(s *watchSettings) { s.draw = draw }
}

// AsError decodes a status error as the client's interceptors do.
var AsError = asError

// IsLoopback is the rule that picks plaintext by default.
var IsLoopback = isLoopback

// UsesTLS reports whether NewClient(target, opts...) would use TLS.
func UsesTLS(target string, opts ...Option) bool { return !settingsFor(target, opts...).plaintext }
