package keyturn_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keyturn/keyturn/clients/go/keyturn"
)

// ownServer is a Keyturn server process that a test starts, stops and
// restarts on one loopback port, with its own data dir and master key.
type ownServer struct {
	t         *testing.T
	command   []string
	dataDir   string
	masterKey string
	addr      string
	log       bytes.Buffer
	process   *exec.Cmd
	exited    chan struct{}
}

// serverCommand finds how to run a server: KEYTURN_SERVER_CMD (a shell
// command to which the serve flags are appended), else the keyturn
// executable named by KEYTURN_BIN, in the repository's .venv, or on PATH.
func serverCommand(t *testing.T) []string {
	t.Helper()
	if command := os.Getenv("KEYTURN_SERVER_CMD"); command != "" {
		return []string{"sh", "-c", command + ` "$@"`, "keyturn-server"}
	}
	if bin := os.Getenv("KEYTURN_BIN"); bin != "" {
		return []string{bin, "serve"}
	}
	if bin, err := filepath.Abs("../../../.venv/bin/keyturn"); err == nil {
		if _, err := os.Stat(bin); err == nil {
			return []string{bin, "serve"}
		}
	}
	if bin, err := exec.LookPath("keyturn"); err == nil {
		return []string{bin, "serve"}
	}
	t.Skip("no Keyturn server to start: set KEYTURN_BIN to the keyturn executable, " +
		"KEYTURN_SERVER_CMD to a command that serves, or run `make setup` for .venv/bin/keyturn")
	return nil
}

// startOwnServer starts a fresh server on a free port and stops it when the
// test ends.
func startOwnServer(t *testing.T) *ownServer {
	t.Helper()
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	s := &ownServer{t: t, command: serverCommand(t), dataDir: t.TempDir(), masterKey: hex.EncodeToString(secret)}
	t.Cleanup(func() {
		s.stop(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("server log:\n%s", s.log.String())
		}
	})
	// Another process may take the port between our probe and the server's
	// bind; then try another one.
	for attempt := 0; ; attempt++ {
		s.addr = freeLoopbackAddress(t)
		if s.start() {
			return s
		}
		if attempt == 2 {
			t.Fatalf("server did not start on three ports; log:\n%s", s.log.String())
		}
	}
}

func freeLoopbackAddress(t *testing.T) string {
	t.Helper()
	lis := must(net.Listen("tcp", "127.0.0.1:0"))(t)
	defer lis.Close()
	return lis.Addr().String()
}

// start runs the server and waits until it answers health checks. It
// returns false when the process exits first.
func (s *ownServer) start() bool {
	s.t.Helper()
	args := append(append([]string{}, s.command[1:]...),
		"--data-dir", s.dataDir, "--listen", s.addr, "--heartbeat", "1s", "--caller-rate-limit", "0")
	s.process = exec.Command(s.command[0], args...)
	s.process.Env = append(withoutServerSettings(os.Environ()), "MASTER_KEY="+s.masterKey)
	s.process.Stdout, s.process.Stderr = &s.log, &s.log
	// Its own process group, so that stop reaches a wrapper's children too;
	// and killed with the test binary should that die first.
	s.process.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.process.Start(); err != nil {
		s.t.Fatalf("start %v: %v", s.command, err)
	}
	s.exited = make(chan struct{})
	go func(p *exec.Cmd, exited chan struct{}) { _ = p.Wait(); close(exited) }(s.process, s.exited)

	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return false
		case <-time.After(100 * time.Millisecond):
		}
		if s.answers() {
			return true
		}
	}
	s.t.Fatalf("server on %s not ready after 30 s; log:\n%s", s.addr, s.log.String())
	return false
}

// answers reports whether the server answers a health check at all (even
// NOT_SERVING proves it listens).
func (s *ownServer) answers() bool {
	c, err := keyturn.NewClient(s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = c.Health.Check(ctx, &healthpb.HealthCheckRequest{})
	code := keyturn.CodeOf(err)
	return code != codes.Unavailable && code != codes.DeadlineExceeded
}

// withoutServerSettings drops variables that would point the server elsewhere
// (another store, port or data dir) than the test chose.
func withoutServerSettings(env []string) []string {
	var kept []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "MASTER_KEY", "KEYTURN_STORE", "DATA_DIR", "KEY_STORAGE_PATH", "PORT":
			continue
		}
		kept = append(kept, kv)
	}
	return kept
}

// stop sends sig to the server's process group and waits for it to exit.
func (s *ownServer) stop(sig syscall.Signal) {
	if s.process == nil || s.process.Process == nil {
		return
	}
	_ = syscall.Kill(-s.process.Process.Pid, sig)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-s.process.Process.Pid, syscall.SIGKILL)
		<-s.exited
	}
	s.process = nil
}

// restart stops the server with sig and starts it again on the same port.
func (s *ownServer) restart(sig syscall.Signal) {
	s.t.Helper()
	s.stop(sig)
	if !s.start() {
		s.t.Fatalf("server did not restart on %s; log:\n%s", s.addr, s.log.String())
	}
}

// client connects with the admin token the server wrote on its first start.
func (s *ownServer) client() *keyturn.Client {
	s.t.Helper()
	token := must(os.ReadFile(filepath.Join(s.dataDir, "admin.token")))(s.t)
	c, err := keyturn.NewClient(s.addr, keyturn.WithToken(strings.TrimSpace(string(token))))
	if err != nil {
		s.t.Fatal(errors.Join(errors.New("client of own server"), err))
	}
	return c
}
