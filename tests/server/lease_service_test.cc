// The lease API without sockets: requests go straight to LeaseService::Handle, the manager runs on
// a ManualClock, and expiry is driven by Sweep(), so every case is deterministic.
#include "server/lease_service.h"

#include <gtest/gtest.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stop_token>
#include <string>

#include "server/api_json.h"
#include "support/manual_manager.h"

namespace laneguard::server {
namespace {

using json = nlohmann::json;

struct Answer {
  int status = 0;
  json body;
  HttpResponse raw;
};

class LeaseServiceTest : public testing_support::ManualManagerTest {
 protected:
  void SetUp() override {
    Config config;
    config.global_concurrency_limit = 4;
    config.lane_concurrency_limits = {{"forecast_model", 1}, {"tool_call", 3}};
    config.default_timeout_ms = 1000;
    config.timeout_escalation_factor = 2;
    MakeManager(config);
    service_ = std::make_unique<LeaseService>(
        *manager_, LeaseServiceOptions{.logger = logger_, .start_sweeper = false});
  }

  // Sends a request; the answer, or status 0 if it has not been answered (yet).
  std::shared_ptr<Answer> Send(std::string method, std::string target, std::string body = "",
                               Peer peer = {.connection_id = 1, .address = "127.0.0.1:5000"},
                               std::stop_token cancel = {}) {
    auto answer = std::make_shared<Answer>();
    HttpRequest request{std::move(method), std::move(target), std::move(body), "", "", peer};
    service_->Handle(std::move(request), std::move(cancel), [answer](HttpResponse r) {
      answer->status = r.status;
      answer->body = json::parse(r.body, nullptr, false);
      answer->raw = std::move(r);
    });
    return answer;
  }
  std::string Acquire(const json& body) {
    auto a = Send("POST", "/v1/leases", body.dump());
    EXPECT_EQ(a->status, 201) << a->raw.body;
    return a->body.value("leaseId", "");
  }
  std::string Header(const HttpResponse& r, const std::string& name) {
    for (const auto& [k, v] : r.headers)
      if (k == name) return v;
    return "";
  }
  double Reclaimed(const std::string& reason) {
    for (const ExtraFamily& f : service_->ExtraFamilies()) {
      if (f.name != "laneguard_leases_reclaimed_total") continue;
      for (const ExtraSample& s : f.samples)
        if (s.labels.at(0).second == reason) return s.value;
    }
    return -1;
  }

  std::unique_ptr<LeaseService> service_;
};

TEST_F(LeaseServiceTest, GrantRenewReleaseAndReleaseAgain) {
  auto a = Send("POST", "/v1/leases",
                R"({"lane":"tool_call","taskId":"t-1","timeoutMs":500,"ttlMs":2000})");
  ASSERT_EQ(a->status, 201) << a->raw.body;
  const std::string id = a->body["leaseId"];
  EXPECT_EQ(a->body["lane"], "tool_call");
  EXPECT_EQ(a->body["taskId"], "t-1");
  EXPECT_EQ(a->body["ttlMs"], 2000);
  EXPECT_EQ(a->body["timeoutMs"], 500);
  EXPECT_EQ(a->body["warnInMs"], 500);
  EXPECT_EQ(a->body["hardInMs"], 1000);
  EXPECT_EQ(a->body["fencingToken"], 1);
  EXPECT_EQ(a->body["grantedAt"], "2026-01-01T00:00:00.000Z");
  EXPECT_EQ(a->body["warnAt"], "2026-01-01T00:00:00.500Z");
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("tool_call").active, 1);

  clock_.AdvanceMs(100);
  auto r = Send("POST", "/v1/leases/" + id + "/renew");
  ASSERT_EQ(r->status, 200) << r->raw.body;
  EXPECT_EQ(r->body["phase"], "running");
  EXPECT_EQ(r->body["stopRequested"], false);
  EXPECT_EQ(r->body["expiresAt"], "2026-01-01T00:00:02.100Z");

  clock_.AdvanceMs(150);
  auto d = Send("DELETE", "/v1/leases/" + id, R"({"outcome":"failure","errorType":"boom"})");
  ASSERT_EQ(d->status, 200) << d->raw.body;
  EXPECT_EQ(d->body["released"], true);
  EXPECT_DOUBLE_EQ(d->body["durationMs"].get<double>(), 250);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("tool_call").active, 0);
  EXPECT_EQ(manager_->GetStatistics().failure_count, 1);

  auto again = Send("DELETE", "/v1/leases/" + id);
  EXPECT_EQ(again->status, 200);
  EXPECT_EQ(again->body["released"], false);
  EXPECT_EQ(again->body["reason"], "already_released");
  auto gone = Send("POST", "/v1/leases/" + id + "/renew");
  EXPECT_EQ(gone->status, 404);
  EXPECT_EQ(gone->body["error"], "lease_not_found");
  EXPECT_EQ(gone->body["reason"], "released");
  EXPECT_EQ(Send("DELETE", "/v1/leases/l-unknown")->status, 404);
}

TEST_F(LeaseServiceTest, FullLaneRefusesWith429AndRetryAfter) {
  Acquire({{"lane", "forecast_model"}});
  auto a = Send("POST", "/v1/leases", R"({"lane":"forecast_model"})");
  ASSERT_EQ(a->status, 429) << a->raw.body;
  EXPECT_EQ(a->body["error"], "lane_limit");
  EXPECT_EQ(a->body["retryAfterMs"], 1000);  // when the holder reaches its timeout
  EXPECT_EQ(Header(a->raw, "Retry-After"), "1");
  EXPECT_NE(a->body["message"].get<std::string>().find("forecast_model"), std::string::npos);
}

TEST_F(LeaseServiceTest, ParkedRequestIsGrantedWhenTheHolderReleases) {
  const std::string first = Acquire({{"lane", "forecast_model"}});
  auto parked = Send("POST", "/v1/leases", R"({"lane":"forecast_model","waitMs":5000})");
  EXPECT_EQ(parked->status, 0);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("forecast_model").queued, 1);
  clock_.AdvanceMs(40);
  ASSERT_EQ(Send("DELETE", "/v1/leases/" + first)->status, 200);
  ASSERT_EQ(parked->status, 201) << parked->raw.body;
  EXPECT_DOUBLE_EQ(parked->body["waitMs"].get<double>(), 40);
  EXPECT_EQ(parked->body["fencingToken"], 2);
  EXPECT_EQ(service_->lease_count(), 1U);
}

TEST_F(LeaseServiceTest, ParkedRequestTimesOutOnce) {
  Acquire({{"lane", "forecast_model"}});
  auto parked = Send("POST", "/v1/leases", R"({"lane":"forecast_model","waitMs":100})");
  clock_.AdvanceMs(150);
  manager_->Tick();
  ASSERT_EQ(parked->status, 429) << parked->raw.body;
  EXPECT_EQ(parked->body["error"], "wait_timeout");
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("forecast_model").queued, 0);
}

TEST_F(LeaseServiceTest, ClientLeavingWhileParkedLeavesTheQueue) {
  const std::string first = Acquire({{"lane", "forecast_model"}});
  std::stop_source client;
  auto parked = Send("POST", "/v1/leases", R"({"lane":"forecast_model","waitMs":60000})",
                     {.connection_id = 7, .address = "127.0.0.1:7"}, client.get_token());
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("forecast_model").queued, 1);
  client.request_stop();
  EXPECT_EQ(parked->status, 503);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("forecast_model").queued, 0);
  // The place the holder frees goes back to the lane, not to the departed client.
  ASSERT_EQ(Send("DELETE", "/v1/leases/" + first)->status, 200);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("forecast_model").active, 0);
  EXPECT_EQ(service_->lease_count(), 0U);
}

TEST_F(LeaseServiceTest, UnrenewedLeaseExpiresAndFreesItsPlace) {
  const std::string id = Acquire({{"lane", "forecast_model"}, {"ttlMs", 200}});
  clock_.AdvanceMs(150);
  ASSERT_EQ(Send("POST", "/v1/leases/" + id + "/renew")->status, 200);  // now due at 350
  clock_.AdvanceMs(150);
  service_->Sweep();
  EXPECT_EQ(service_->lease_count(), 1U);
  clock_.AdvanceMs(60);
  service_->Sweep();
  EXPECT_EQ(service_->lease_count(), 0U);
  EXPECT_EQ(Reclaimed("lease_expired"), 1);
  auto renew = Send("POST", "/v1/leases/" + id + "/renew");
  EXPECT_EQ(renew->status, 404);
  EXPECT_EQ(renew->body["reason"], "lease_expired");
  auto release = Send("DELETE", "/v1/leases/" + id);
  EXPECT_EQ(release->body["released"], false);
  EXPECT_EQ(release->body["reason"], "lease_expired");
  Acquire({{"lane", "forecast_model"}});  // the place is free again
  EXPECT_NE(log_.ReadAll().find("\"lease_reclaimed\""), std::string::npos);
}

TEST_F(LeaseServiceTest, ConnectionBoundLeaseEndsWithItsConnection) {
  const Peer unix_peer{
      .connection_id = 9, .unix_socket = true, .address = "unix:/x", .pid = 42, .uid = 1000};
  auto a = Send("POST", "/v1/leases", R"({"lane":"tool_call","bindToConnection":true})", unix_peer);
  ASSERT_EQ(a->status, 201) << a->raw.body;
  auto holders = Send("GET", "/v1/leases");
  ASSERT_EQ(holders->body["leases"].size(), 1U);
  EXPECT_EQ(holders->body["leases"][0]["client"]["pid"], 42);
  EXPECT_EQ(holders->body["leases"][0]["boundToConnection"], true);
  service_->OnConnectionClosed(8);  // another connection: nothing
  EXPECT_EQ(service_->lease_count(), 1U);
  service_->OnConnectionClosed(9);
  EXPECT_EQ(service_->lease_count(), 0U);
  EXPECT_EQ(Reclaimed("connection_closed"), 1);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("tool_call").active, 0);

  auto tcp = Send("POST", "/v1/leases", R"({"lane":"tool_call","bindToConnection":true})");
  EXPECT_EQ(tcp->status, 400);
  EXPECT_EQ(tcp->body["field"], "bindToConnection");
}

TEST_F(LeaseServiceTest, RenewReportsThePhases) {
  const std::string id = Acquire({{"lane", "tool_call"}, {"timeoutMs", 100}, {"ttlMs", 10000}});
  clock_.AdvanceMs(120);
  auto warning = Send("POST", "/v1/leases/" + id + "/renew");
  EXPECT_EQ(warning->body["phase"], "warning");
  EXPECT_EQ(warning->body["stopRequested"], true);
  clock_.AdvanceMs(100);
  auto hard = Send("POST", "/v1/leases/" + id + "/renew");
  EXPECT_EQ(hard->body["phase"], "hard");
  // Past its hard deadline the slot is still counted until released or expired.
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("tool_call").active, 1);
}

TEST_F(LeaseServiceTest, BadRequestsNameTheFieldAndLoseNothing) {
  const std::string held = Acquire({{"lane", "tool_call"}});
  const struct {
    std::string body, field, in_message;
  } cases[] = {
      {"{not json", "body", "not valid JSON"},
      {"[1,2]", "body", "JSON object"},
      {R"({"taskId":"x"})", "lane", "required"},
      {R"({"lane":7})", "lane", "lane = 7"},
      {R"({"lane":"nope"})", "lane", "configured: forecast_model, tool_call"},
      {R"({"lane":"tool_call","timeoutMs":-5})", "timeoutMs", "timeoutMs = -5"},
      {R"({"lane":"tool_call","timeoutMs":1.5})", "timeoutMs", "integer"},
      {R"({"lane":"tool_call","waitMs":"soon"})", "waitMs", "\"soon\""},
      {R"({"lane":"tool_call","priority":"urgent"})", "priority", "urgent"},
      {R"({"lane":"tool_call","ttlMs":5})", "ttlMs", "ttlMs = 5"},
      {R"({"lane":"tool_call","traceparent":"00-zz"})", "traceparent", "00-zz"},
      {R"({"lane":"tool_call","metadata":[1]})", "metadata", "[...]"},
      {R"({"lane":"tool_call","metadata":{"a":{"b":1}}})", "metadata", "metadata.a"},
  };
  for (const auto& c : cases) {
    auto a = Send("POST", "/v1/leases", c.body);
    EXPECT_EQ(a->status, 400) << c.body;
    EXPECT_EQ(a->body["error"], "invalid_request") << c.body;
    EXPECT_EQ(a->body["field"], c.field) << c.body << " -> " << a->raw.body;
    EXPECT_NE(a->body.value("message", "").find(c.in_message), std::string::npos)
        << c.body << " -> " << a->raw.body;
  }
  auto bad_outcome = Send("DELETE", "/v1/leases/" + held, R"({"outcome":"maybe"})");
  EXPECT_EQ(bad_outcome->status, 400);
  EXPECT_EQ(bad_outcome->body["field"], "outcome");
  EXPECT_EQ(Send("GET", "/v1/nothing")->status, 404);
  auto wrong_method = Send("PATCH", "/v1/status");
  EXPECT_EQ(wrong_method->status, 405);
  EXPECT_EQ(Header(wrong_method->raw, "Allow"), "GET");
  // The held lease is untouched by all of that.
  EXPECT_EQ(service_->lease_count(), 1U);
  EXPECT_EQ(Send("POST", "/v1/leases/" + held + "/renew")->status, 200);
  EXPECT_EQ(manager_->GetConcurrencyStatus().global.active, 1);
}

TEST_F(LeaseServiceTest, DrainRefusesNewLeasesAndAsksHoldersToStop) {
  const std::string id = Acquire({{"lane", "tool_call"}});
  EXPECT_EQ(Send("GET", "/readyz")->status, 200);
  service_->BeginDrain();
  auto refused = Send("POST", "/v1/leases", R"({"lane":"tool_call"})");
  EXPECT_EQ(refused->status, 503);
  EXPECT_EQ(refused->body["error"], "shutting_down");
  EXPECT_EQ(Send("GET", "/readyz")->status, 503);
  EXPECT_EQ(Send("GET", "/healthz")->status, 200);
  EXPECT_EQ(Send("POST", "/v1/leases/" + id + "/renew")->body["stopRequested"], true);
  EXPECT_FALSE(service_->WaitUntilIdle(std::chrono::milliseconds(1)));
  EXPECT_EQ(Send("DELETE", "/v1/leases/" + id)->status, 200);
  EXPECT_TRUE(service_->WaitUntilIdle(std::chrono::milliseconds(1)));
}

TEST_F(LeaseServiceTest, StatusAndHoldersDump) {
  Acquire({{"lane", "forecast_model"}, {"taskId", "a"}});
  clock_.AdvanceMs(10);
  Acquire({{"lane", "tool_call"}, {"taskId", "b"}});
  Send("POST", "/v1/leases", R"({"lane":"forecast_model","waitMs":1000})");
  auto status = Send("GET", "/v1/status");
  EXPECT_EQ(status->body["global"]["active"], 2);
  EXPECT_EQ(status->body["global"]["limit"], 4);
  EXPECT_EQ(status->body["lanes"]["forecast_model"]["queued"], 1);
  EXPECT_EQ(status->body["leases"], 2);
  EXPECT_EQ(status->body["parked"], 1);
  auto holders = Send("GET", "/v1/leases");
  ASSERT_EQ(holders->body["leases"].size(), 2U);
  EXPECT_EQ(holders->body["leases"][0]["taskId"], "a");  // the oldest first
  EXPECT_EQ(holders->body["leases"][0]["ageMs"], 10);
  EXPECT_EQ(holders->body["leases"][1]["client"]["address"], "127.0.0.1:5000");
  auto stats = Send("GET", "/v1/statistics");
  EXPECT_EQ(stats->status, 200);
  EXPECT_TRUE(stats->body.contains("totalCalls"));
  auto config = Send("GET", "/v1/config");
  EXPECT_EQ(config->body["laneConcurrencyLimits"]["forecast_model"], 1);
  EXPECT_EQ(Send("PUT", "/v1/config", "{}")->status, 405);  // no update_config given
}

TEST_F(LeaseServiceTest, DestroyingTheServiceAnswersParkedRequestsAndReleasesLeases) {
  Acquire({{"lane", "forecast_model"}});
  auto parked = Send("POST", "/v1/leases", R"({"lane":"forecast_model","waitMs":60000})");
  service_.reset();
  EXPECT_EQ(parked->status, 503);
  EXPECT_EQ(manager_->GetConcurrencyStatus().global.active, 0);
  EXPECT_EQ(manager_->GetConcurrencyStatus().lanes.at("forecast_model").queued, 0);
}

}  // namespace
}  // namespace laneguard::server

namespace laneguard::server {
namespace {

TEST(ObjectWriterTest, WritesWhatAJsonParserReadsBack) {
  const std::string tricky = "q\"b\\s/\n\t\x01\xc3\xa9";
  ObjectWriter w;
  w.Str("s", tricky).Int("i", -42).Num("d", 0.1).Num("inf", 1.0 / 0.0).Bool("b", true);
  const nlohmann::json back = nlohmann::json::parse(std::move(w).Finish());
  EXPECT_EQ(back["s"], tricky);
  EXPECT_EQ(back["i"], -42);
  EXPECT_EQ(back["d"], 0.1);
  EXPECT_TRUE(back["inf"].is_null());
  EXPECT_EQ(back["b"], true);
}

}  // namespace
}  // namespace laneguard::server
