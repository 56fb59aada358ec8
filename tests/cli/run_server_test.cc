// `laneguard run --server` and `laneguard batch --server` against the real daemon: a `laneguard
// serve` started on 127.0.0.1:0 for each test.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>
#include <tuple>

#include "support/cli_fixture.h"

namespace {

using laneguard::testing_support::Slurp;
using ::testing::HasSubstr;
using namespace std::chrono_literals;
using json = nlohmann::json;
using Steady = std::chrono::steady_clock;

struct SpanTimes {
  int64_t start = 0, end = 0;
  json span;
};

// The worker_call:<lane> spans of a --spans file.
std::vector<SpanTimes> CallSpans(const std::string& path, const std::string& lane) {
  std::vector<SpanTimes> out;
  std::istringstream lines(Slurp(path));
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    json span = json::parse(line);
    if (span["name"] != "worker_call:" + lane) continue;
    out.push_back({std::stoll(span["startTimeUnixNano"].get<std::string>()),
                   std::stoll(span["endTimeUnixNano"].get<std::string>()), span});
  }
  return out;
}

// Most spans open at one moment (an end sorts before a start at the same time).
int MaxOverlap(const std::vector<SpanTimes>& spans) {
  std::vector<std::pair<int64_t, int>> edges;
  for (const SpanTimes& s : spans) {
    edges.emplace_back(s.start, +1);
    edges.emplace_back(s.end, -1);
  }
  std::sort(edges.begin(), edges.end());
  int now = 0, most = 0;
  for (const auto& [t, d] : edges) most = std::max(most, now += d);
  return most;
}

class RunServerTest : public laneguard::testing_support::CliFixture {
 protected:
  void TearDown() override {
    StopDaemon();
    CliFixture::TearDown();
  }

  // Starts `laneguard serve` with `config` on 127.0.0.1:0 and waits for its "ready" line.
  void StartDaemon(const std::string& config, const std::vector<std::string>& extra = {}) {
    const std::string config_file = Write("daemon.json", config);
    const std::string err = Path("daemon.stderr");
    std::vector<std::string> argv = {LANEGUARD_CLI_PATH, "serve",    "--config",
                                     config_file,        "--listen", "127.0.0.1:0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_EQ(posix_spawn(&daemon_, args[0], &actions, nullptr, args.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    const auto deadline = Steady::now() + 20s;
    std::smatch m;
    std::string text;
    while (Steady::now() < deadline) {
      text = Slurp(err);
      if (text.find("laneguard serve: ready") != std::string::npos) break;
      int status = 0;
      ASSERT_EQ(waitpid(daemon_, &status, WNOHANG), 0) << "the daemon ended: " << text;
      std::this_thread::sleep_for(10ms);
    }
    ASSERT_THAT(text, HasSubstr("laneguard serve: ready"));
    ASSERT_TRUE(
        std::regex_search(text, m, std::regex(R"(listening on (http://127\.0\.0\.1:[0-9]+))")))
        << text;
    url_ = m[1];
  }

  // SIGTERM, and the daemon's exit status.
  int StopDaemon() {
    if (daemon_ <= 0) return -1;
    kill(daemon_, SIGTERM);
    int status = 0;
    waitpid(daemon_, &status, 0);
    daemon_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  // A `run --server` in the background, its output in files of its own (the fixture's Start
  // uses one pair for all).
  pid_t StartRun(const std::string& name, std::vector<std::string> args) {
    std::vector<std::string> all = {LANEGUARD_CLI_PATH, "run", "--server", url_};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, Path(name + ".stdout").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, Path(name + ".stderr").c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }
  static int Reap(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  bool AwaitFile(const std::string& path, std::chrono::milliseconds limit = 20s) {
    const auto deadline = Steady::now() + limit;
    while (Steady::now() < deadline) {
      if (std::filesystem::exists(path)) return true;
      std::this_thread::sleep_for(5ms);
    }
    return false;
  }

  pid_t daemon_ = -1;
  std::string url_;
};

constexpr char kConfig[] =
    R"({"laneConcurrencyLimits": {"forecast_model": 1, "critic": 3}, "maxRssMb": 100000})";

TEST_F(RunServerTest, TwoRunsOnALaneOfOneNeverOverlap) {
  StartDaemon(kConfig);
  std::vector<pid_t> runs;
  for (int i = 0; i < 2; ++i)
    runs.push_back(
        StartRun("run" + std::to_string(i),
                 {"--lane", "forecast_model", "--wait", "30s", "--spans",
                  Path("spans" + std::to_string(i) + ".jsonl"), "--", "sh", "-c", "sleep 0.3"}));
  for (size_t i = 0; i < runs.size(); ++i)
    EXPECT_EQ(Reap(runs[i]), 0) << Slurp(Path("run" + std::to_string(i) + ".stderr"));
  std::vector<SpanTimes> spans = CallSpans(Path("spans0.jsonl"), "forecast_model");
  const std::vector<SpanTimes> second = CallSpans(Path("spans1.jsonl"), "forecast_model");
  spans.insert(spans.end(), second.begin(), second.end());
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(MaxOverlap(spans), 1);
}

TEST_F(RunServerTest, TenRunsOnALaneOfThreeNeverExceedThree) {
  StartDaemon(kConfig);
  std::vector<pid_t> runs;
  for (int i = 0; i < 10; ++i)
    runs.push_back(StartRun("run" + std::to_string(i),
                            {"--lane", "critic", "--wait", "60s", "--spans",
                             Path("spans" + std::to_string(i) + ".jsonl"), "--", "sleep", "0.2"}));
  std::vector<SpanTimes> spans;
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(Reap(runs[i]), 0) << Slurp(Path("run" + std::to_string(i) + ".stderr"));
    const auto mine = CallSpans(Path("spans" + std::to_string(i) + ".jsonl"), "critic");
    spans.insert(spans.end(), mine.begin(), mine.end());
  }
  ASSERT_EQ(spans.size(), 10u);
  EXPECT_LE(MaxOverlap(spans), 3);
  EXPECT_GE(MaxOverlap(spans), 2);  // they did run side by side: the limit, not a lock
}

// The lease's timeoutMs (the daemon's default here) is the command's: it is stopped for time.
TEST_F(RunServerTest, TheLeaseTimeoutStopsTheCommand) {
  StartDaemon(R"({"defaultTimeoutMs": 300, "maxRssMb": 100000})");
  const auto start = Steady::now();
  EXPECT_EQ(Cli({"run", "--server", url_, "--", "sleep", "30"}), 124) << err_;
  EXPECT_LT(Steady::now() - start, 10s);
  EXPECT_THAT(err_, HasSubstr("timed out"));
}

// A draining daemon answers renewals with stopRequested: the command is stopped, and told why.
TEST_F(RunServerTest, StopRequestedByTheDaemonStopsTheCommand) {
  StartDaemon(kConfig);
  const std::string ready = Path("ready");
  const auto start = Steady::now();
  const pid_t run = StartRun("run", {"--ttl", "300ms", "--timeout", "60s", "--", "sh", "-c",
                                     "touch " + ready + "; exec sleep 30"});
  ASSERT_TRUE(AwaitFile(ready));
  kill(daemon_, SIGTERM);
  EXPECT_EQ(Reap(run), 125) << Slurp(Path("run.stderr"));
  EXPECT_LT(Steady::now() - start, 15s);
  EXPECT_THAT(Slurp(Path("run.stderr")), HasSubstr("the daemon asked to stop"));
  // The release let the drain end.
  int status = 0;
  waitpid(daemon_, &status, 0);
  daemon_ = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// A daemon killed and restarted knows no lease of before: the run's next renewal gets 404, and
// the run stops its command rather than run on without a slot.
TEST_F(RunServerTest, ALeaseLostToADaemonRestartStopsTheCommand) {
  StartDaemon(kConfig);
  const std::string old_port = url_.substr(url_.rfind(':') + 1);
  const std::string ready = Path("ready");
  const auto start = Steady::now();
  // A TTL of 6 s: renewals every 2 s, and 3 s of failed renewals before the run gives up on
  // its own, so a slow restart (a sanitizer build) still ends in the 404 this test is about.
  const pid_t run = StartRun("run", {"--ttl", "6s", "--timeout", "60s", "--", "sh", "-c",
                                     "touch " + ready + "; exec sleep 30"});
  ASSERT_TRUE(AwaitFile(ready));
  kill(daemon_, SIGKILL);
  waitpid(daemon_, nullptr, 0);
  daemon_ = -1;
  StartDaemon(kConfig, {"--listen", "127.0.0.1:" + old_port});
  EXPECT_EQ(Reap(run), 125) << Slurp(Path("run.stderr"));
  EXPECT_LT(Steady::now() - start, 15s);
  EXPECT_THAT(Slurp(Path("run.stderr")), HasSubstr("the lease is gone on the daemon"));
}

TEST_F(RunServerTest, RefusedAtOnceOnAFullLane) {
  StartDaemon(kConfig);
  const std::string ready = Path("ready");
  const pid_t holder = StartRun(
      "holder", {"--lane", "forecast_model", "--", "sh", "-c", "touch " + ready + "; sleep 2"});
  ASSERT_TRUE(AwaitFile(ready));
  EXPECT_EQ(Cli({"run", "--server", url_, "--lane", "forecast_model", "--wait", "0", "--", "true"}),
            125);
  EXPECT_THAT(err_, HasSubstr("refused: lane_limit"));
  EXPECT_THAT(err_, HasSubstr("retryAfterMs"));
  EXPECT_EQ(Reap(holder), 0);
}

TEST_F(RunServerTest, UnreachableDaemonNamesTheFlagAndTheUrl) {
  // A port nobody listens on: bound, then closed.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  const std::string url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  EXPECT_EQ(Cli({"run", "--server", url, "--", "true"}), 125);
  EXPECT_THAT(err_, HasSubstr("--server " + url + ": cannot reach the daemon"));
  EXPECT_EQ(Cli({"batch", Write("jobs.jsonl", "{\"cmd\": [\"true\"]}\n"), "--server", url}), 125);
  EXPECT_THAT(err_, HasSubstr("--server " + url + ": cannot reach the daemon"));
}

TEST_F(RunServerTest, BadServerFlagsAreUsageErrors) {
  EXPECT_EQ(Cli({"run", "--server", "ftp://example", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--server ftp://example"));
  EXPECT_EQ(Cli({"run", "--server", "unix:relative.sock", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--server unix:relative.sock"));
  EXPECT_EQ(Cli({"run", "--server", "http://127.0.0.1:1", "--config", "x.json", "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--config with --server"));
  EXPECT_EQ(Cli({"run", "--server", "http://127.0.0.1:1", "--traceparent", "nope", "--", "true"}),
            2);
  EXPECT_THAT(err_, HasSubstr("--traceparent nope"));
}

// The run's span is in the caller's trace, under the daemon's lease span; the command gets the
// run's own span as TRACEPARENT.
TEST_F(RunServerTest, TheRunJoinsTheLeaseTrace) {
  StartDaemon(kConfig, {"--spans", Path("daemon-spans.jsonl")});
  const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string caller = "00f067aa0ba902b7";
  const std::string seen = Path("traceparent");
  EXPECT_EQ(Cli({"run", "--server", url_, "--spans", Path("spans.jsonl"), "--", "sh", "-c",
                 "echo $TRACEPARENT > " + seen},
                {"TRACEPARENT=00-" + trace + "-" + caller + "-01"}),
            0)
      << err_;
  EXPECT_EQ(StopDaemon(), 0);  // its spans flushed
  const auto spans = CallSpans(Path("spans.jsonl"), "tool_call");
  const auto leases = CallSpans(Path("daemon-spans.jsonl"), "tool_call");
  ASSERT_EQ(spans.size(), 1u);
  ASSERT_EQ(leases.size(), 1u);
  const json& span = spans[0].span;
  EXPECT_EQ(span["traceId"], trace);
  EXPECT_EQ(leases[0].span["traceId"], trace);
  EXPECT_EQ(leases[0].span["parentSpanId"], caller);
  EXPECT_EQ(span["parentSpanId"], leases[0].span["spanId"]);
  EXPECT_EQ(Slurp(seen), "00-" + trace + "-" + span["spanId"].get<std::string>() + "-01\n");
}

// A daemon that traces nothing has no lease span to join: the run joins the caller's trace.
TEST_F(RunServerTest, WithoutTheDaemonsSpansTheRunJoinsTheCallersTrace) {
  StartDaemon(kConfig);
  const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string caller = "00f067aa0ba902b7";
  EXPECT_EQ(Cli({"run", "--server", url_, "--spans", Path("spans.jsonl"), "--traceparent",
                 "00-" + trace + "-" + caller + "-01", "--", "true"}),
            0)
      << err_;
  const auto spans = CallSpans(Path("spans.jsonl"), "tool_call");
  ASSERT_EQ(spans.size(), 1u);
  EXPECT_EQ(spans[0].span["traceId"], trace);
  EXPECT_EQ(spans[0].span["parentSpanId"], caller);
}

// Jobs of a batch and a run beside it share the daemon's lane of one.
TEST_F(RunServerTest, BatchJobsTakeLeasesBesideARun) {
  StartDaemon(kConfig);
  std::string jobs;
  for (int i = 0; i < 3; ++i)
    jobs += R"({"lane": "forecast_model", "cmd": ["sleep", "0.2"]})"
            "\n";
  const pid_t run = StartRun("run", {"--lane", "forecast_model", "--wait", "30s", "--spans",
                                     Path("run-spans.jsonl"), "--", "sleep", "0.2"});
  EXPECT_EQ(Cli({"batch", Write("jobs.jsonl", jobs), "--server", url_, "--quiet", "--spans",
                 Path("batch-spans.jsonl")}),
            0)
      << err_;
  EXPECT_EQ(Reap(run), 0) << Slurp(Path("run.stderr"));
  std::vector<SpanTimes> spans = CallSpans(Path("batch-spans.jsonl"), "forecast_model");
  EXPECT_EQ(spans.size(), 3u);
  const auto mine = CallSpans(Path("run-spans.jsonl"), "forecast_model");
  spans.insert(spans.end(), mine.begin(), mine.end());
  ASSERT_EQ(spans.size(), 4u);
  EXPECT_EQ(MaxOverlap(spans), 1);
}

TEST_F(RunServerTest, BatchJobRefusedByTheDaemonFailsUnrun) {
  StartDaemon(kConfig);
  const std::string ready = Path("ready");
  const pid_t holder = StartRun(
      "holder", {"--lane", "forecast_model", "--", "sh", "-c", "touch " + ready + "; sleep 2"});
  ASSERT_TRUE(AwaitFile(ready));
  EXPECT_EQ(Cli({"batch",
                 Write("jobs.jsonl", R"({"id": "f", "lane": "forecast_model", "cmd": ["true"]})"
                                     "\n"),
                 "--server", url_, "--wait", "0", "--quiet", "--summary", "json"}),
            1);
  const json summary = json::parse(out_);
  EXPECT_THAT(summary["results"][0]["reason"].get<std::string>(), HasSubstr("lane_limit"));
  EXPECT_EQ(Reap(holder), 0);
}

// A daemon with a token: --token-file sends it; without one the 401 is said.
TEST_F(RunServerTest, TokenFileAuthorizesTheLease) {
  const std::string token = Write("token", "s3cret\n");
  StartDaemon(kConfig, {"--token-file", token});
  EXPECT_EQ(Cli({"run", "--server", url_, "--", "true"}), 125);
  EXPECT_THAT(err_, HasSubstr("--server " + url_ + ": HTTP 401"));
  EXPECT_EQ(Cli({"run", "--server", url_, "--token-file", token, "--", "true"}), 0) << err_;
  EXPECT_EQ(Cli({"run", "--server", url_, "--token-file", Path("missing"), "--", "true"}), 2);
  EXPECT_THAT(err_, HasSubstr("--token-file " + Path("missing")));
}

}  // namespace
