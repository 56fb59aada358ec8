// The `laneguard` command wired to the telemetry exporters: --otlp and the OTEL_* variables against
// a receiver on 127.0.0.1, --metrics-file checked by promtool, --metrics-listen scraped mid-run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/cli_fixture.h"

namespace {

using laneguard::testing_support::Slurp;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
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

// The URL printed for an IPv6 listener can be pasted: its host is in brackets.
TEST_F(CliTelemetryTest, MetricsListenPrintsAnIpv6UrlWithBrackets) {
  const int status = Cli({"run", "--metrics-listen", "[::1]:0", "--", "true"});
  if (status == 2 && err_.find("could not listen") != std::string::npos)
    GTEST_SKIP() << "no IPv6 loopback here: " << err_;
  EXPECT_EQ(status, 0) << err_;
  EXPECT_THAT(err_, ContainsRegex(R"(serving metrics on http://\[::1\]:[0-9]+/metrics)"));
}

TEST_F(CliTelemetryTest, BadTelemetryFlagsAreUsageErrors) {
  EXPECT_EQ(Cli({"run", "--metrics-listen", "127.0.0.1:http", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("127.0.0.1:http"));
  EXPECT_EQ(Cli({"run", "--otlp", "ftp://collector", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("ftp://collector"));
  EXPECT_EQ(Cli({"batch", Write("j.jsonl", "{\"cmd\": [\"true\"]}\n"), "--metrics-file",
                 "/laneguard/no/such/dir/m.prom"}),
            2);  // checked before anything runs, as --spans is
  EXPECT_THAT(err_, HasSubstr("/laneguard/no/such/dir/m.prom"));
}

// ---- lost telemetry is reported, never silent -----------------------------------------------

// Every line of the file, each of which must be a whole JSON object.
std::vector<json> JsonLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> lines;
  std::string line;
  while (std::getline(in, line)) {
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(j.is_object()) << path << ": not a whole JSON line: " << line;
    lines.push_back(std::move(j));
  }
  const std::string text = Slurp(path);
  EXPECT_TRUE(text.empty() || text.back() == '\n') << path << ": ends in a cut line";
  return lines;
}

// The number before `what` in the "telemetry lost" line, 0 when absent.
uint64_t LostCount(const std::string& err, const std::string& what) {
  std::smatch m;
  if (!std::regex_search(err, m, std::regex("telemetry lost:.*?(\\d+) " + what + " \\("))) return 0;
  return std::stoull(m[1]);
}

TEST_F(CliTelemetryTest, SpansAndLogsToAFullDeviceAreReportedInOneLine) {
  EXPECT_EQ(Cli({"run", "--spans", "/dev/full", "--log", "/dev/full", "--", "true"}), 0);
  EXPECT_THAT(err_, HasSubstr("laneguard: telemetry lost: 1 span (--spans /dev/full: No space "
                              "left on device), "));
  EXPECT_THAT(err_,
              ContainsRegex("[0-9]+ log lines \\(--log /dev/full: No space left on device\\)"));
  EXPECT_EQ(std::count(err_.begin(), err_.end(), '\n'), 1) << err_;
}

TEST_F(CliTelemetryTest, StrictTelemetryMakesLostTelemetryFailTheCommand) {
  EXPECT_EQ(Cli({"run", "--strict-telemetry", "--spans", "/dev/full", "--", "true"}), 122);
  EXPECT_THAT(err_, HasSubstr("telemetry lost: 1 span"));
  // Nothing lost: the command's own status.
  EXPECT_EQ(Cli({"run", "--strict-telemetry", "--spans", Path("s.jsonl"), "--", "true"}), 0);
  EXPECT_THAT(err_, Not(HasSubstr("telemetry lost")));
  // A failing command keeps its status; the loss is still reported.
  EXPECT_EQ(Cli({"run", "--strict-telemetry", "--spans", "/dev/full", "--", "sh", "-c", "exit 3"}),
            3);
  EXPECT_THAT(err_, HasSubstr("telemetry lost: 1 span"));
  EXPECT_EQ(Cli({"batch", Write("j.jsonl", "{\"cmd\": [\"true\"]}\n"), "--quiet",
                 "--strict-telemetry", "--log", "/dev/full"}),
            122);
  EXPECT_THAT(err_, ContainsRegex("telemetry lost: [0-9]+ log lines"));
  EXPECT_EQ(Cli({"run", "--help"}), 0);
  EXPECT_THAT(out_, HasSubstr("122 with --strict-telemetry"));
}

// A disk that fills mid-batch, made by a file size limit (writes past it fail with EFBIG, as
// they would with ENOSPC): the files keep whole lines only, and every span not in the file is
// counted in the report.
TEST_F(CliTelemetryTest, ADiskFillingMidBatchKeepsWholeLinesAndCountsEveryLoss) {
  constexpr int kJobs = 100;
  std::string jobs;
  for (int i = 0; i < kJobs; ++i)
    jobs += "{\"id\": \"j" + std::to_string(i) + "\", \"cmd\": [\"true\"]}\n";
  const std::string job_file = Write("jobs.jsonl", jobs);
  // Run with SIGXFSZ ignored by whoever started laneguard, and at its default, as under a user's
  // `ulimit -f`: laneguard ignores it itself, so a write past the limit fails with EFBIG (as a full
  // disk's fails with ENOSPC) instead of killing laneguard and orphaning the jobs.
  for (const bool parent_ignores_sigxfsz : {true, false}) {
    SCOPED_TRACE(parent_ignores_sigxfsz ? "SIGXFSZ ignored by the parent" : "SIGXFSZ at default");
    const std::string tag = parent_ignores_sigxfsz ? "ignored" : "default";
    const std::string spans = Path("spans-" + tag + ".jsonl"), log = Path("log-" + tag + ".jsonl");
    std::vector<std::string> args = {LANEGUARD_CLI_PATH, "batch", job_file, "--quiet",
                                     "--spans",          spans,   "--log",  log};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string out_path = Path("stdout"), err_path = Path("stderr");
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(out, 1);
      dup2(err, 2);
      const rlimit limit{16 * 1024, 16 * 1024};  // a few dozen lines of each file
      setrlimit(RLIMIT_FSIZE, &limit);
      signal(SIGXFSZ, parent_ignores_sigxfsz ? SIG_IGN : SIG_DFL);
      execv(argv[0], argv.data());
      _exit(127);
    }
    EXPECT_EQ(Wait(pid), 0) << err_;
    const size_t spans_kept = JsonLines(spans).size();
    const size_t lines_kept = JsonLines(log).size();
    EXPECT_GT(spans_kept, 0u);
    EXPECT_LT(spans_kept, static_cast<size_t>(kJobs));
    EXPECT_EQ(spans_kept + LostCount(err_, "spans"), static_cast<size_t>(kJobs)) << err_;
    EXPECT_THAT(err_, HasSubstr("spans (--spans " + spans + ": File too large)"));
    EXPECT_GT(LostCount(err_, "log lines"), 0u) << err_;
    EXPECT_GT(lines_kept, 0u);
    EXPECT_THAT(err_, HasSubstr("log lines (--log " + log + ": File too large)"));
  }
}

// ---- a dead collector costs at most the flush timeout at exit ------------------------------

// A listening socket on 127.0.0.1 that never answers: connections complete in the kernel's
// backlog, requests are never read.
class BlackHole {
 public:
  BlackHole() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    listen(fd_, 16);
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~BlackHole() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it), not listening.
class RefusedPort {
 public:
  RefusedPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~RefusedPort() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST_F(CliTelemetryTest, ABlackHoleCollectorCostsAtMostTheFlushTimeout) {
  BlackHole hole;
  const std::string url = "http://127.0.0.1:" + std::to_string(hole.port());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Cli({"run", "--otlp", url, "--flush-timeout", "1s", "--", "true"}), 0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // A functional bound, not a speed test: without one the exit waited 31 s.
  EXPECT_LT(seconds, 1 + 5.0);
  EXPECT_THAT(err_, HasSubstr("telemetry lost: 1 span (--otlp " + url +
                              ": not sent before the flush timeout)"));
  EXPECT_GT(LostCount(err_, "log records"), 0u) << err_;
}

TEST_F(CliTelemetryTest, ARefusingCollectorCostsAtMostTheDefaultFlushTimeout) {
  RefusedPort refused;
  const std::string url = "http://127.0.0.1:" + std::to_string(refused.port());
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Cli({"run", "--otlp", url, "--", "true"}), 0);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // The default flush timeout is 2 s; without one the retries took 10 s.
  EXPECT_LT(seconds, 2 + 5.0);
  EXPECT_THAT(err_, HasSubstr("telemetry lost: 1 span (--otlp " + url +
                              ": not sent before the flush timeout; last error: Couldn't connect "
                              "to server)"));
  EXPECT_GT(LostCount(err_, "log records"), 0u) << err_;
  EXPECT_EQ(Cli({"run", "--otlp", url, "--flush-timeout", "soon", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--flush-timeout"));
}

}  // namespace
