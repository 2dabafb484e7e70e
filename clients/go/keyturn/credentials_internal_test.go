package keyturn

import "testing"

func TestLoopbackTargetsArePlaintextByDefault(t *testing.T) {
	cases := map[string]bool{
		"127.0.0.1:50051":              true,
		"127.8.9.10:1":                 true,
		"[::1]:50051":                  true,
		"localhost:50051":              true,
		"dns:///localhost:50051":       true,
		"dns://127.0.0.53/localhost:1": false, // another resolver decides
		"dns://8.8.8.8/127.0.0.1:1":    false,
		"foo.localhost:1":              false,
		"dns:///foo.localhost:1":       false,
		"localhost.evil.example:1":     false,
		"127.0.0.1.nip.io:1":           false,
		"LOCALHOST:1":                  true,
		"localhost":                    true,
		"127.0.0.1":                    true,
		"passthrough:///127.0.0.1:1":   true,
		"unix-abstract:keyturn":        true,
		"unix:///run/keyturn.sock":     true,
		"keyturn.internal:443":         false,
		"10.0.0.5:50051":               false,
		"dns:///keyturn.dev:443":       false,
		"[2001:db8::1]:50051":          false,
	}
	for target, want := range cases {
		if got := isLoopback(target); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", target, got, want)
		}
	}
}
