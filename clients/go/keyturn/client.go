package keyturn

import (
	"context"
	"crypto/tls"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

// Client is a connection to a Keyturn server. Its fields are the generated
// service clients, extended with page iterators and the reconnecting watch;
// every RPC error they return is an *Error. A Client is safe for concurrent
// use; Close it when done.
type Client struct {
	Keys    *Keys
	Handles *Handles
	Admin   *Admin
	// Health is the standard grpc.health.v1 service; it needs no token.
	Health healthpb.HealthClient

	conn      *grpc.ClientConn
	closing   chan struct{}
	closeOnce sync.Once
}

// Keys is KeyService plus helpers.
type Keys struct {
	keyturnv1.KeyServiceClient
	conn    *grpc.ClientConn
	closing <-chan struct{}
}

// Handles is HandleService plus helpers.
type Handles struct {
	keyturnv1.HandleServiceClient
	conn    *grpc.ClientConn
	closing <-chan struct{}
}

// Admin is AdminService plus helpers.
type Admin struct{ keyturnv1.AdminServiceClient }

// NewClient returns a client of the Keyturn server at target ("host:port" or
// a gRPC target such as "dns:///host:port"). Like grpc.NewClient it does no
// I/O: the connection is made by the first call, and a wrong address or TLS
// setting shows there (Health.Check is a call that needs no token).
//
// The transport is TLS unless target is a loopback address (WithTLS,
// WithPlaintext); unary calls get DefaultTimeout unless their context has a
// deadline (WithDefaultTimeout); calls the API marks idempotent are retried
// per DefaultRetryPolicy (WithRetryPolicy).
//
// A token a header cannot carry (whitespace, a line break read from a file, a
// control character, non-ASCII) is an error here, which does not repeat it;
// grpc would otherwise fail every call with INTERNAL.
func NewClient(target string, opts ...Option) (*Client, error) {
	s := settingsFor(target, opts...)
	if err := checkToken(s.token); err != nil {
		return nil, err
	}
	closing := make(chan struct{})

	dialOpts := []grpc.DialOption{
		grpc.WithUserAgent("keyturn-go"),
		grpc.WithKeepaliveParams(DefaultKeepalive()),
		grpc.WithChainUnaryInterceptor(convertUnaryErrors, defaultDeadline(s.timeout), retrying(s.retry, jitter, closing)),
		grpc.WithChainStreamInterceptor(convertStreamErrors),
	}
	if s.plaintext {
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		cfg := s.tlsConfig
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		dialOpts = append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	if s.token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearerToken{token: s.token, requireTLS: !s.plaintext}))
	}
	dialOpts = append(dialOpts, s.dialOptions...)

	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("keyturn: client for %s: %w", target, err)
	}
	return &Client{
		Keys:    &Keys{keyturnv1.NewKeyServiceClient(conn), conn, closing},
		Handles: &Handles{keyturnv1.NewHandleServiceClient(conn), conn, closing},
		Admin:   &Admin{keyturnv1.NewAdminServiceClient(conn)},
		Health:  healthpb.NewHealthClient(conn),
		conn:    conn,
		closing: closing,
	}, nil
}

// Conn returns the underlying connection, for other services on the same server.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; calls and watches in progress end with
// CANCELED, also a watch waiting to reconnect.
func (c *Client) Close() error {
	err := c.conn.Close()
	c.closeOnce.Do(func() { close(c.closing) })
	return err
}

func convertUnaryErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption,
) error {
	return convertError(invoker(ctx, method, req, reply, cc, opts...))
}

func convertStreamErrors(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption,
) (grpc.ClientStream, error) {
	stream, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, convertError(err)
	}
	return errorConvertingStream{stream}, nil
}

// errorConvertingStream turns the status errors of a stream into *Error;
// io.EOF (the normal end of a stream) passes unchanged.
type errorConvertingStream struct{ grpc.ClientStream }

func (s errorConvertingStream) RecvMsg(m any) error {
	return convertError(s.ClientStream.RecvMsg(m))
}

func (s errorConvertingStream) SendMsg(m any) error {
	return convertError(s.ClientStream.SendMsg(m))
}
