package keyturn_test

import (
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	keyturnv1 "github.com/keyturn/keyturn/clients/go/gen/keyturn/v1"
)

func TestHealthReportsEveryComponentServing(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)

	health := must(c.Admin.GetHealth(ctx, &keyturnv1.GetHealthRequest{}))(t).GetHealth()
	if health.GetStatus() != keyturnv1.ServingStatus_SERVING_STATUS_SERVING || health.GetVersion() == "" {
		t.Errorf("health = %v; want SERVING with a version", health)
	}
	components := map[string]*keyturnv1.ComponentHealth{}
	for _, component := range health.GetComponents() {
		components[component.GetName()] = component
	}
	for _, name := range []string{"keys", "handles", "store", "scheduler"} {
		if components[name].GetStatus() != keyturnv1.ServingStatus_SERVING_STATUS_SERVING {
			t.Errorf("component %q = %v; want SERVING", name, components[name])
		}
	}
	if !components["store"].GetStore().GetWritable() {
		t.Errorf("store is not writable: %v", components["store"])
	}

	keysOnly := must(c.Admin.GetHealth(ctx, &keyturnv1.GetHealthRequest{Component: "keys"}))(t).GetHealth()
	if len(keysOnly.GetComponents()) != 1 || keysOnly.GetComponents()[0].GetKeys() == nil {
		t.Errorf("GetHealth(keys) = %v; want the keys component alone", keysOnly)
	}
}

func TestStandardHealthServiceAnswersWithoutToken(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	for _, service := range []string{"", "keyturn.v1.KeyService"} {
		resp := must(c.Health.Check(ctx, &healthpb.HealthCheckRequest{Service: service}))(t)
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) = %v, want SERVING", service, resp.GetStatus())
		}
	}
}

func TestStatisticsCountWhatWasGenerated(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "api"}))(t)
	issued := must(c.Handles.GenerateHandle(ctx, &keyturnv1.GenerateHandleRequest{Type: "session"}))(t)
	must(c.Handles.ValidateHandle(ctx, &keyturnv1.ValidateHandleRequest{Token: issued.GetToken()}))(t)

	keys := must(c.Keys.GetKeyStatistics(ctx, &keyturnv1.GetKeyStatisticsRequest{}))(t).GetStatistics()
	if keys.GetTotal() < 1 || keys.GetByType()["api"].GetTotal() < 1 || keys.GetGenerated().GetLastHour() < 1 {
		t.Errorf("key statistics = %v; want the api key counted", keys)
	}
	handles := must(c.Handles.GetHandleStatistics(ctx, &keyturnv1.GetHandleStatisticsRequest{}))(t).GetStatistics()
	if handles.GetByType()["session"].GetTotal() < 1 || handles.GetValidationsSucceeded() < 1 {
		t.Errorf("handle statistics = %v; want the session handle and its validation counted", handles)
	}
}

func TestAuditLogListsOurGenerationAndVerifies(t *testing.T) {
	c, ctx := liveClient(t), testContext(t)
	key := must(c.Keys.GenerateKey(ctx, &keyturnv1.GenerateKeyRequest{Type: "encryption", UserId: "auditor-check"}))(t).GetKey()

	found := false
	for event, err := range c.Admin.AllAuditEvents(ctx, &keyturnv1.ListAuditEventsRequest{ResourceId: key.GetId(), PageSize: 1}) {
		if err != nil {
			t.Fatal(err)
		}
		if event.GetAction() == "key.generate" && event.GetUserId() == "auditor-check" {
			found = true
		}
	}
	if !found {
		t.Errorf("no key.generate audit event for %s", key.GetId())
	}
	verified := must(c.Admin.VerifyAuditLog(ctx, &keyturnv1.VerifyAuditLogRequest{}))(t)
	if !verified.GetValid() {
		t.Errorf("VerifyAuditLog = %v", verified)
	}
}
