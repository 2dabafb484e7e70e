package keyturn

import (
	"context"
	"net"
	"strings"
)

// bearerToken is the per-RPC credential behind WithToken.
type bearerToken struct {
	token string
	// requireTLS is false only on the plaintext connections Dial makes: to a
	// loopback address by default, elsewhere only after an explicit
	// WithPlaintext. Otherwise grpc refuses to send the token without TLS.
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }

// isLoopback reports whether a gRPC target names this machine: a loopback IP,
// "localhost", or a unix socket. Targets may carry a scheme ("dns:///h:p").
func isLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	if i := strings.Index(target, ":///"); i >= 0 {
		target = target[i+4:]
	} else if i := strings.Index(target, "://"); i >= 0 {
		target = target[i+3:]
		if j := strings.Index(target, "/"); j >= 0 {
			target = target[j+1:]
		}
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = strings.Trim(target, "[]")
	}
	if strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
