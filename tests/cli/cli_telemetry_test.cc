// The `laneguard` command wired to the telemetry exporters: --otlp and the OTEL_* variables against
// a receiver on 127.0.0.1, --metrics-file checked by promtool, --metrics-listen scraped mid-run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/cli_fixture.h"

namespace {

using laneguard::testing_support::Slurp;
using ::testing::HasSubstr;
using namespace std::chrono_literals;
using json = nlohmann::json;

// Accepts OTLP/HTTP posts on 127.0.0.1 and keeps the bodies by path.
class Collector {
 public:
  Collector() {
    server_.Post(R"(/v1/(traces|logs))",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   std::lock_guard<std::mutex> lock(mu_);
                   bodies_[req.path].push_back(req.body);
                   res.set_content("{}", "application/json");
                 });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~Collector() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<json> Posts(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<json> out;
    for (const std::string& body : bodies_[path]) out.push_back(json::parse(body));
    return out;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::map<std::string, std::vector<std::string>> bodies_;
};

std::string ResourceAttribute(const json& resource_spans, const std::string& key) {
  for (const auto& a : resource_spans["resource"]["attributes"])
    if (a["key"] == key) return a["value"]["stringValue"];
  return "<missing>";
}

class CliTelemetryTest : public laneguard::testing_support::CliFixture {};

TEST_F(CliTelemetryTest, OtlpFlagSendsSpansAndLogs) {
  Collector collector;
  EXPECT_EQ(Cli({"run", "--otlp", collector.url(), "--task", "lint-7", "--", "true"}), 0) << err_;
  auto traces = collector.Posts("/v1/traces");
  ASSERT_EQ(traces.size(), 1u);
  const json& rs = traces[0]["resourceSpans"][0];
  EXPECT_EQ(ResourceAttribute(rs, "service.name"), "laneguard");
  const json& span = rs["scopeSpans"][0]["spans"][0];
  EXPECT_EQ(span["name"], "worker_call:tool_call");
  EXPECT_EQ(span["status"]["code"], 1);
  auto logs = collector.Posts("/v1/logs");
  ASSERT_FALSE(logs.empty());
  EXPECT_FALSE(logs[0]["resourceLogs"][0]["scopeLogs"][0]["logRecords"].empty());
}

TEST_F(CliTelemetryTest, OtelVariablesConfigureExportWithoutFlags) {
  Collector collector;
  EXPECT_EQ(
      Cli({"run", "--", "true"}, {"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.url(),
                                  "OTEL_SERVICE_NAME=upgrade-bot", "OTEL_BSP_MAX_QUEUE_SIZE=lots"}),
      0);
  auto traces = collector.Posts("/v1/traces");
  ASSERT_EQ(traces.size(), 1u);
  EXPECT_EQ(ResourceAttribute(traces[0]["resourceSpans"][0], "service.name"), "upgrade-bot");
  EXPECT_THAT(err_, HasSubstr("OTEL_BSP_MAX_QUEUE_SIZE='lots' ignored"));
}

TEST_F(CliTelemetryTest, SdkDisabledSendsNothing) {
  Collector collector;
  EXPECT_EQ(Cli({"run", "--", "true"},
                {"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.url(), "OTEL_SDK_DISABLED=true"}),
            0);
  EXPECT_TRUE(collector.Posts("/v1/traces").empty());
}

TEST_F(CliTelemetryTest, MetricsFileHoldsTheFinalExpositionAndPassesPromtool) {
  const std::string jobs = Write("jobs.jsonl",
                                 "{\"cmd\": [\"true\"]}\n{\"cmd\": \"exit 3\"}\n"
                                 "{\"lane\": \"critic\", \"cmd\": [\"true\"]}\n");
  const std::string metrics = Path("metrics.prom");
  EXPECT_EQ(Cli({"batch", jobs, "--quiet", "--metrics-file", metrics}), 1);
  const std::string text = Slurp(metrics);
  EXPECT_THAT(text, HasSubstr("laneguard_calls_total{lane=\"tool_call\",outcome=\"success\"} 1"));
  EXPECT_THAT(text, HasSubstr("laneguard_calls_total{lane=\"tool_call\",outcome=\"failure\"} 1"));
  EXPECT_THAT(text, HasSubstr("laneguard_queue_wait_seconds_count{lane=\"tool_call\"} 2"));
  EXPECT_THAT(text, HasSubstr("laneguard_queue_wait_seconds_count{lane=\"critic\"} 1"));
  EXPECT_EQ(std::system(("promtool check metrics < " + metrics + " > /dev/null").c_str()), 0);
}

TEST_F(CliTelemetryTest, MetricsListenServesWhileTheCommandRuns) {
  const std::string ready = Path("ready");
  const pid_t cli = Start(
      {"run", "--metrics-listen", "127.0.0.1:0", "--", "sh", "-c", "touch " + ready + "; sleep 2"});
  int port = 0;
  for (int i = 0; i < 500 && (port == 0 || !std::filesystem::exists(ready)); ++i) {
    std::smatch m;
    const std::string err = Slurp(dir_ / "stderr");
    if (std::regex_search(err, m,
                          std::regex(R"(serving metrics on http://127\.0\.0\.1:(\d+)/metrics)")))
      port = std::stoi(m[1]);
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_GT(port, 0);
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_THAT(res->body, HasSubstr("laneguard_global_active_calls 1"));
  EXPECT_EQ(Wait(cli), 0);
}

TEST_F(CliTelemetryTest, BadTelemetryFlagsAreUsageErrors) {
  EXPECT_EQ(Cli({"run", "--metrics-listen", "127.0.0.1:http", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("127.0.0.1:http"));
  EXPECT_EQ(Cli({"run", "--otlp", "ftp://collector", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("ftp://collector"));
  EXPECT_EQ(Cli({"batch", Write("j.jsonl", "{\"cmd\": [\"true\"]}\n"), "--metrics-file",
                 "/laneguard/no/such/dir/m.prom"}),
            125);
  EXPECT_THAT(err_, HasSubstr("/laneguard/no/such/dir/m.prom"));
}

}  // namespace
