package keyturn

import (
	"context"
	"fmt"
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

// checkToken refuses a token a header cannot carry: visible ASCII only, as the
// other Keyturn clients require. The error gives its length, never its text.
func checkToken(token string) error {
	for i := 0; i < len(token); i++ {
		if token[i] < 0x21 || token[i] > 0x7e {
			return fmt.Errorf("keyturn: the bearer token (%d bytes) holds characters a header cannot carry: "+
				"whitespace, a line break, a control character or non-ASCII (trim what you read from a file)", len(token))
		}
	}
	return nil
}

// isLoopback reports whether a gRPC target names this machine: a literal
// loopback IP (127.0.0.0/8, ::1), exactly "localhost", or a unix socket.
// Targets may carry a scheme with an empty authority ("dns:///h:p"); one with
// an authority ("dns://8.8.8.8/h:p") asks another resolver and is not loopback,
// nor is any other name ("*.localhost" may resolve anywhere).
func isLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	if i := strings.Index(target, "://"); i >= 0 {
		rest := target[i+3:]
		if !strings.HasPrefix(rest, "/") {
			return false // a non-empty authority
		}
		target = rest[1:]
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(target, "["), "]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
