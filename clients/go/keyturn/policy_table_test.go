package keyturn_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
	"github.com/keyturn/keyturn/clients/go/keyturn"
)

// The shared client-policy table (clients/policy/cases.json) and the scripted
// server that plays its cases (clients/policy/scripted_server.py), which
// every client's tests run alike.

type backoffRow struct {
	InitialMs  float64 `json:"initial_ms"`
	Multiplier float64 `json:"multiplier"`
	MaxMs      float64 `json:"max_ms"`
}

func (b backoffRow) backoff() keyturn.Backoff {
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	return keyturn.Backoff{Initial: ms(b.InitialMs), Max: ms(b.MaxMs), Multiplier: b.Multiplier}
}

type expectation struct {
	Code               string    `json:"code"`
	Attempts           *int      `json:"attempts"`
	MinAttempts        int       `json:"min_attempts"`
	MinWaitsMs         []float64 `json:"min_waits_ms"`
	MaxDeadlineDriftMs *float64  `json:"max_deadline_drift_ms"`
	GrantedMs          []float64 `json:"granted_ms"`
	MaxElapsedMs       *float64  `json:"max_elapsed_ms"`
	NoDeadline         bool      `json:"no_deadline"`
	TLS                bool      `json:"tls"`
	Delivered          []string  `json:"delivered"`
	ResumeAfter        []*int64  `json:"resume_after"`
}

type policyTable struct {
	Policy struct {
		CallBackoff      backoffRow `json:"call_backoff"`
		MaxAttempts      *int       `json:"max_attempts"`
		DefaultTimeoutMs float64    `json:"default_timeout_ms"`
		WatchBackoff     backoffRow `json:"watch_backoff"`
		Keepalive        struct {
			TimeMs    float64 `json:"time_ms"`
			TimeoutMs float64 `json:"timeout_ms"`
		} `json:"keepalive"`
		WatchSilence struct {
			Heartbeats float64 `json:"heartbeats"`
			FloorMs    float64 `json:"floor_ms"`
		} `json:"watch_silence"`
	} `json:"policy"`
	TestBackoff backoffRow        `json:"test_backoff"`
	Methods     map[string]string `json:"methods"`
	Backoff     []struct {
		Policy      string  `json:"policy"`
		Retry       int     `json:"retry"`
		Random      float64 `json:"random"`
		RetryInfoMs float64 `json:"retry_info_ms"`
		DelayMs     float64 `json:"delay_ms"`
	} `json:"backoff"`
	Loopback []struct {
		Address  string `json:"address"`
		Loopback bool   `json:"loopback"`
	} `json:"loopback"`
	Calls []struct {
		Name        string      `json:"name"`
		Method      string      `json:"method"`
		TimeoutMs   *float64    `json:"timeout_ms"`
		MaxAttempts int         `json:"max_attempts"`
		Transport   string      `json:"transport"`
		Expect      expectation `json:"expect"`
	} `json:"calls"`
	Watches []struct {
		Name        string      `json:"name"`
		Subject     string      `json:"subject"`
		ResumeAfter *int64      `json:"resume_after"`
		Expect      expectation `json:"expect"`
	} `json:"watches"`
}

// scriptedRun is what the scripted server saw of one run.
type scriptedRun struct {
	Attempts        int        `json:"attempts"`
	Methods         []string   `json:"methods"`
	WaitsMs         []float64  `json:"waits_ms"`
	GrantedMs       []*float64 `json:"granted_ms"`
	DeadlineDriftMs *float64   `json:"deadline_drift_ms"`
	ResumeAfter     []*int64   `json:"resume_after"`
	TLS             []bool     `json:"tls"`
}

func loadTable(t *testing.T) policyTable {
	t.Helper()
	path := os.Getenv("KEYTURN_POLICY_CASES")
	if path == "" {
		path = filepath.Join("..", "..", "policy", "cases.json")
	}
	var table policyTable
	if err := json.Unmarshal(must(os.ReadFile(path))(t), &table); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return table
}

// scriptedServer returns the variables of the scripted server the test
// scripts started, or skips.
func scriptedServerEnv(t *testing.T) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, name := range []string{"ADDRESS", "TLS_ADDRESS", "CA", "CONTROL"} {
		env[name] = os.Getenv("KEYTURN_POLICY_" + name)
		if env[name] == "" {
			t.Skip("KEYTURN_POLICY_* are not set: start clients/policy/scripted_server.py " +
				"(clients/go/run-tests.sh does) to run the shared policy cases")
		}
	}
	return env
}

func fetchRun(t *testing.T, control, token string) scriptedRun {
	t.Helper()
	resp := must(http.Get(control + "/runs/" + token))(t)
	defer resp.Body.Close()
	var run scriptedRun
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&run) != nil {
		t.Fatalf("no run %s on the scripted server (HTTP %d)", token, resp.StatusCode)
	}
	return run
}

// checkRun compares what the server saw with the case's expectations.
func checkRun(t *testing.T, expect expectation, run scriptedRun) {
	t.Helper()
	for i, least := range expect.MinWaitsMs {
		if i >= len(run.WaitsMs) || run.WaitsMs[i] < least {
			t.Errorf("waits %v ms; want wait %d >= %v ms", run.WaitsMs, i, least)
		}
	}
	if expect.MaxDeadlineDriftMs != nil && (run.DeadlineDriftMs == nil || *run.DeadlineDriftMs > *expect.MaxDeadlineDriftMs) {
		t.Errorf("deadline drift %v ms; want at most %v (one deadline for all attempts)", deref(run.DeadlineDriftMs), *expect.MaxDeadlineDriftMs)
	}
	if len(expect.GrantedMs) == 2 {
		if len(run.GrantedMs) == 0 || run.GrantedMs[0] == nil || *run.GrantedMs[0] < expect.GrantedMs[0] || *run.GrantedMs[0] > expect.GrantedMs[1] {
			t.Errorf("the server saw a deadline of %v ms; want %v", grantedOf(run), expect.GrantedMs)
		}
	}
	if expect.NoDeadline && slices.ContainsFunc(run.GrantedMs, func(g *float64) bool { return g != nil }) {
		t.Errorf("a watch stream carried a deadline: %v ms", grantedOf(run))
	}
	if expect.TLS && slices.Contains(run.TLS, false) {
		t.Errorf("attempts over TLS: %v; want all", run.TLS)
	}
}

func deref(v *float64) any {
	if v == nil {
		return nil
	}
	return *v
}

func grantedOf(run scriptedRun) []any {
	var out []any
	for _, g := range run.GrantedMs {
		out = append(out, deref(g))
	}
	return out
}

func codeName(err error) string { return code.Code(keyturn.CodeOf(err)).String() }

// tableCalls makes one call per method the table scripts; the scripted
// server ignores the requests.
var tableCalls = map[string]func(context.Context, *keyturn.Client) error{
	"keyturn.v1.KeyService/GetKey": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Keys.GetKey(ctx, &keyturnv1.GetKeyRequest{KeyId: "key_x"})
		return err
	},
	"keyturn.v1.KeyService/Encrypt": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Keys.Encrypt(ctx, &keyturnv1.EncryptRequest{KeyId: "key_x"})
		return err
	},
	"keyturn.v1.KeyService/Decrypt": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Keys.Decrypt(ctx, &keyturnv1.DecryptRequest{KeyId: "key_x"})
		return err
	},
	"keyturn.v1.KeyService/Sign": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Keys.Sign(ctx, &keyturnv1.SignRequest{KeyId: "key_x"})
		return err
	},
	"keyturn.v1.KeyService/ComputeMac": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Keys.ComputeMac(ctx, &keyturnv1.ComputeMacRequest{KeyId: "key_x"})
		return err
	},
	"keyturn.v1.KeyService/GenerateKey": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "encryption"})
		return err
	},
	"keyturn.v1.HandleService/ValidateHandle": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{Token: "kt_x"})
		return err
	},
	"keyturn.v1.HandleService/RotateHandle": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Handles.RotateHandle(ctx, &keyturnv1.RotateHandleRequest{})
		return err
	},
	"keyturn.v1.AdminService/UpdateConfig": func(ctx context.Context, c *keyturn.Client) error {
		_, err := c.Admin.UpdateConfig(ctx, &keyturnv1.UpdateConfigRequest{})
		return err
	},
}

func TestPolicyDefaultsAreTheTableNumbers(t *testing.T) {
	table := loadTable(t)
	if got, want := keyturn.DefaultRetryPolicy().Backoff, table.Policy.CallBackoff.backoff(); got != want {
		t.Errorf("DefaultRetryPolicy().Backoff = %+v, want %+v", got, want)
	}
	if got := keyturn.DefaultRetryPolicy().MaxAttempts; (table.Policy.MaxAttempts == nil) != (got == 0) {
		t.Errorf("DefaultRetryPolicy().MaxAttempts = %d, want the table's %v (0: none)", got, table.Policy.MaxAttempts)
	}
	if got, want := keyturn.DefaultWatchBackoff(), table.Policy.WatchBackoff.backoff(); got != want {
		t.Errorf("DefaultWatchBackoff() = %+v, want %+v", got, want)
	}
	if keyturn.DefaultTimeout != time.Duration(table.Policy.DefaultTimeoutMs)*time.Millisecond {
		t.Errorf("DefaultTimeout = %v, want %v ms", keyturn.DefaultTimeout, table.Policy.DefaultTimeoutMs)
	}
	keepalive := keyturn.DefaultKeepalive() // what NewClient dials with
	if keepalive.Time != time.Duration(table.Policy.Keepalive.TimeMs)*time.Millisecond ||
		keepalive.Timeout != time.Duration(table.Policy.Keepalive.TimeoutMs)*time.Millisecond ||
		keepalive.PermitWithoutStream {
		t.Errorf("DefaultKeepalive() = %+v, want a ping after %v ms, closed after %v ms, only with a call open",
			keepalive, table.Policy.Keepalive.TimeMs, table.Policy.Keepalive.TimeoutMs)
	}
	silence := table.Policy.WatchSilence
	if got := keyturn.DefaultWatchSilence(); got.Heartbeats != silence.Heartbeats ||
		got.Floor != time.Duration(silence.FloorMs*float64(time.Millisecond)) {
		t.Errorf("DefaultWatchSilence() = %+v, want %v heartbeats, at least %v ms", got, silence.Heartbeats, silence.FloorMs)
	}
}

func TestEveryRPCIsRetriedAsItsIdempotencyLevelSays(t *testing.T) {
	table := loadTable(t)
	levels := map[string]string{}
	for _, file := range []protoreflect.FileDescriptor{
		keyturnv1.File_keyturn_v1_keys_proto, keyturnv1.File_keyturn_v1_handles_proto, keyturnv1.File_keyturn_v1_admin_proto,
	} {
		for i := range file.Services().Len() {
			service := file.Services().Get(i)
			for j := range service.Methods().Len() {
				method := service.Methods().Get(j)
				options, _ := method.Options().(*descriptorpb.MethodOptions)
				levels[string(service.FullName())+"/"+string(method.Name())] = options.GetIdempotencyLevel().String()
			}
		}
	}
	if fmt.Sprint(levels) != fmt.Sprint(table.Methods) {
		t.Errorf("the descriptors' levels\n%v\ndiffer from the table's\n%v", levels, table.Methods)
	}
	for name, level := range table.Methods {
		if got, want := keyturn.Retryable("/"+name), level != "IDEMPOTENCY_UNKNOWN"; got != want {
			t.Errorf("Retryable(%s) = %v, want %v (%s)", name, got, want, level)
		}
	}
}

func TestBackoffVectors(t *testing.T) {
	table := loadTable(t)
	for _, v := range table.Backoff {
		b := table.Policy.CallBackoff.backoff()
		if v.Policy == "watch" {
			b = table.Policy.WatchBackoff.backoff()
		}
		wait := max(b.Delay(v.Retry, v.Random), time.Duration(v.RetryInfoMs*float64(time.Millisecond)))
		if got := float64(wait) / float64(time.Millisecond); math.Abs(got-v.DelayMs) > 0.001 {
			t.Errorf("%s backoff, retry %d, draw %v: %v ms, want %v", v.Policy, v.Retry, v.Random, got, v.DelayMs)
		}
	}
}

func TestLoopbackVectors(t *testing.T) {
	for _, v := range loadTable(t).Loopback {
		if got := keyturn.IsLoopback(v.Address); got != v.Loopback {
			t.Errorf("isLoopback(%q) = %v, want %v", v.Address, got, v.Loopback)
		}
		if got := keyturn.UsesTLS(v.Address); got == v.Loopback {
			t.Errorf("NewClient(%q) uses TLS: %v; want TLS unless loopback", v.Address, got)
		}
	}
}

func TestPolicyTableCalls(t *testing.T) {
	table, env := loadTable(t), scriptedServerEnv(t)
	for index, tc := range table.Calls {
		t.Run(tc.Name, func(t *testing.T) {
			call, ok := tableCalls[tc.Method]
			if !ok {
				t.Fatalf("no call for %s", tc.Method)
			}
			token := fmt.Sprintf("call-%d~go-%d", index, time.Now().UnixNano())
			opts := []keyturn.Option{
				keyturn.WithToken(token),
				keyturn.WithRetryPolicy(keyturn.RetryPolicy{Backoff: table.TestBackoff.backoff(), MaxAttempts: tc.MaxAttempts}),
			}
			addr := env["ADDRESS"]
			if tc.Transport == "tls" {
				roots := x509.NewCertPool()
				if !roots.AppendCertsFromPEM(must(os.ReadFile(env["CA"]))(t)) {
					t.Fatal("no certificate in KEYTURN_POLICY_CA")
				}
				addr = env["TLS_ADDRESS"]
				opts = append(opts, keyturn.WithTLS(&tls.Config{RootCAs: roots, ServerName: "keyturn.test", MinVersion: tls.VersionTLS12}))
			}
			c := must(keyturn.NewClient(addr, opts...))(t)
			defer c.Close()
			ctx, cancel := context.Background(), context.CancelFunc(func() {})
			if tc.TimeoutMs != nil {
				ctx, cancel = context.WithTimeout(ctx, time.Duration(*tc.TimeoutMs*float64(time.Millisecond)))
			}
			defer cancel()

			start := time.Now()
			err := call(ctx, c)
			elapsed := time.Since(start)

			run := fetchRun(t, env["CONTROL"], token)
			if got := codeName(err); got != tc.Expect.Code {
				t.Errorf("outcome %s (%v), want %s", got, err, tc.Expect.Code)
			}
			if tc.Expect.Attempts != nil && run.Attempts != *tc.Expect.Attempts {
				t.Errorf("%d attempts, want %d", run.Attempts, *tc.Expect.Attempts)
			}
			if run.Attempts < tc.Expect.MinAttempts {
				t.Errorf("%d attempts, want at least %d", run.Attempts, tc.Expect.MinAttempts)
			}
			if tc.Expect.MaxElapsedMs != nil && elapsed > time.Duration(*tc.Expect.MaxElapsedMs*float64(time.Millisecond)) {
				t.Errorf("the call took %v, want at most %v ms", elapsed, *tc.Expect.MaxElapsedMs)
			}
			checkRun(t, tc.Expect, run)
		})
	}
}

func TestPolicyTableWatches(t *testing.T) {
	table, env := loadTable(t), scriptedServerEnv(t)
	for index, tc := range table.Watches {
		t.Run(tc.Name, func(t *testing.T) {
			token := fmt.Sprintf("watch-%d~go-%d", index, time.Now().UnixNano())
			c := must(keyturn.NewClient(env["ADDRESS"], keyturn.WithToken(token)))(t)
			defer c.Close()
			// A cancel after 20 s, not a deadline: a watch's streams carry none.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			defer time.AfterFunc(20*time.Second, cancel).Stop()
			watch := c.Keys.Watch
			if tc.Subject == "handles" {
				watch = c.Handles.Watch
			}

			var delivered []string
			var final error
			backoff := keyturn.WithWatchBackoff(table.TestBackoff.backoff())
			for event, err := range watch(ctx, &keyturnv1.WatchExpiringRequest{ResumeAfter: tc.ResumeAfter}, backoff) {
				if err != nil {
					final = err
					break
				}
				delivered = append(delivered, describe([]*keyturnv1.ExpiryEvent{event}))
			}

			run := fetchRun(t, env["CONTROL"], token)
			if final == nil || ctx.Err() != nil {
				t.Fatalf("the watch did not end by itself (%v); delivered %v", final, delivered)
			}
			if !slices.Equal(delivered, tc.Expect.Delivered) || codeName(final) != tc.Expect.Code {
				t.Errorf("delivered %v then %s; want %v then %s", delivered, codeName(final), tc.Expect.Delivered, tc.Expect.Code)
			}
			if fmt.Sprint(ints(run.ResumeAfter)) != fmt.Sprint(ints(tc.Expect.ResumeAfter)) {
				t.Errorf("resume_after per stream %v, want %v", ints(run.ResumeAfter), ints(tc.Expect.ResumeAfter))
			}
			checkRun(t, tc.Expect, run)
		})
	}
}

func ints(values []*int64) []any {
	out := []any{}
	for _, v := range values {
		if v == nil {
			out = append(out, nil)
		} else {
			out = append(out, *v)
		}
	}
	return out
}
