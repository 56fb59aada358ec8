#include "laneguard/exporters/prometheus.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "exporters/prometheus_internal.h"
#include "support/manual_manager.h"

namespace laneguard {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Every sample line of an exposition, "name{labels}" -> value.
std::map<std::string, double> Samples(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    out[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  return out;
}

class PrometheusTest : public testing_support::ManualManagerTest {
 protected:
  void SetUp() override {
    Config config;
    config.lane_concurrency_limits = {{"tool_call", 4}, {"file_read", 2}, {"forecast_model", 1}};
    config.global_concurrency_limit = 8;
    MakeManager(config);
    PrometheusOptions prom;
    prom.logger = logger_;
    prom.span_counts = [] {
      SpanCounts c;
      c.exported = 5;
      c.dropped_queue_full = 1;
      c.dropped_export_failed = 2;
      c.dropped_retries_exhausted = 4;
      return c;
    };
    collector_ = PrometheusCollector::Create(manager_.get(), prom).value();
  }

  // One call in `lane` lasting `ms`.
  void Call(std::string_view lane, int64_t ms, bool success) { Calls(lane, 1, ms, success); }

  std::shared_ptr<PrometheusCollector> collector_;
};

TEST_F(PrometheusTest, CountsKnownCallsInEveryFamily) {
  for (int i = 0; i < 3; ++i) Call("tool_call", 20, true);
  Call("file_read", 2000, false);
  // A call that passes its timeout (100 ms) and then its hard deadline (150 ms), then fails.
  auto late = manager_->TryAcquire("task", "file_read", 100);
  ASSERT_TRUE(late.ok());
  clock_.AdvanceMs(120);
  manager_->Tick();
  clock_.AdvanceMs(60);
  manager_->Tick();
  late->Release(false);
  // Rejections: the lane is full, and a lane that does not exist.
  auto held = manager_->TryAcquire("task", "forecast_model");
  ASSERT_TRUE(held.ok());
  EXPECT_FALSE(manager_->TryAcquire("task", "forecast_model").ok());
  EXPECT_FALSE(manager_->TryAcquire("task", "no_such_lane").ok());
  collector_->ObserveQueueWait("tool_call", 0.5);
  collector_->ObserveQueueWait("not_a_lane", 2);
  logger_->LogWarning("one");
  logger_->LogWarning("two");

  const std::map<std::string, double> s =
      Samples(collector_->Serialize(ExpositionFormat::kText004));
  EXPECT_EQ(s.at(R"(laneguard_calls_total{lane="tool_call",outcome="success"})"), 3);
  EXPECT_EQ(s.at(R"(laneguard_calls_total{lane="tool_call",outcome="failure"})"), 0);
  EXPECT_EQ(s.at(R"(laneguard_calls_total{lane="file_read",outcome="failure"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_calls_total{lane="file_read",outcome="timeout"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_timeouts_total{lane="file_read",phase="warning"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_timeouts_total{lane="file_read",phase="escalation"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_timeouts_total{lane="tool_call",phase="warning"})"), 0);
  EXPECT_EQ(s.at(R"(laneguard_rejections_total{lane="forecast_model",reason="lane_limit"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_rejections_total{lane="",reason="unknown_lane"})"), 1);
  // Lane "" carries only what happened to it: no zero series for the other reasons.
  EXPECT_EQ(s.count(R"(laneguard_rejections_total{lane="",reason="lane_limit"})"), 0u);
  // 20 ms calls land in the 0.025 s bucket, not the 0.01 s one.
  EXPECT_EQ(s.at(R"(laneguard_call_duration_seconds_bucket{lane="tool_call",le="0.01"})"), 0);
  EXPECT_EQ(s.at(R"(laneguard_call_duration_seconds_bucket{lane="tool_call",le="0.025"})"), 3);
  EXPECT_EQ(s.at(R"(laneguard_call_duration_seconds_bucket{lane="tool_call",le="+Inf"})"), 3);
  EXPECT_EQ(s.at(R"(laneguard_call_duration_seconds_count{lane="tool_call"})"), 3);
  EXPECT_DOUBLE_EQ(s.at(R"(laneguard_call_duration_seconds_sum{lane="tool_call"})"), 0.06);
  EXPECT_DOUBLE_EQ(s.at(R"(laneguard_call_duration_seconds_sum{lane="file_read"})"), 2.18);
  EXPECT_EQ(s.at(R"(laneguard_queue_wait_seconds_bucket{lane="tool_call",le="0.1"})"), 0);
  EXPECT_EQ(s.at(R"(laneguard_queue_wait_seconds_bucket{lane="tool_call",le="0.5"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_queue_wait_seconds_count{lane=""})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_lane_active_calls{lane="forecast_model"})"), 1);
  EXPECT_EQ(s.at(R"(laneguard_lane_active_calls{lane="tool_call"})"), 0);
  EXPECT_EQ(s.at(R"(laneguard_lane_concurrency_limit{lane="tool_call"})"), 4);
  EXPECT_EQ(s.at(R"(laneguard_lane_overrunning_calls{lane="forecast_model"})"), 0);
  EXPECT_EQ(s.at("laneguard_global_active_calls"), 1);
  EXPECT_EQ(s.at("laneguard_global_concurrency_limit"), 8);
  EXPECT_EQ(s.at("laneguard_rss_bytes"), 100.0 * 1024 * 1024);
  EXPECT_EQ(s.at("laneguard_heap_used_bytes"), 50.0 * 1024 * 1024);
  EXPECT_EQ(s.at("laneguard_rss_limit_bytes"), 512.0 * 1024 * 1024);
  EXPECT_EQ(s.at("laneguard_heap_warning_threshold_bytes"), 400.0 * 1024 * 1024);
  EXPECT_EQ(s.at("laneguard_spans_exported_total"), 5);
  EXPECT_EQ(s.at(R"(laneguard_spans_dropped_total{reason="export_failed"})"), 2);
  EXPECT_EQ(s.at(R"(laneguard_spans_dropped_total{reason="retries_exhausted"})"), 4);
  EXPECT_EQ(s.at(R"(laneguard_spans_dropped_total{reason="shutdown_timeout"})"), 0);
  EXPECT_EQ(s.at(R"(laneguard_log_lines_total{level="warning"})"), 2);
  held->Release(true);
}

TEST_F(PrometheusTest, EveryFamilyHasHelpAndTypeAndNoTaskIds) {
  Call("tool_call", 5, true);
  const std::string text = collector_->Serialize(ExpositionFormat::kText004);
  const auto families = CollectFamilies(*collector_);
  EXPECT_EQ(families.size(), 21u);
  for (const auto& f : families) {
    EXPECT_THAT(text, HasSubstr("# HELP " + f.name + " ")) << f.name;
    EXPECT_THAT(text, HasSubstr("# TYPE " + f.name + " ")) << f.name;
    EXPECT_THAT(f.name, StartsWith("laneguard_"));
    EXPECT_FALSE(f.metric.empty()) << f.name;
  }
  // The calls' task id ("task") is no label value, and no label is a task id (a reason named
  // task_quota is fine).
  EXPECT_THAT(text, ::testing::Not(HasSubstr("\"task\"")));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("task_id")));
}

TEST_F(PrometheusTest, CountersNeverGoBackwardsAfterTheRingForgets) {
  // The manager's ring keeps metricsCapacity records; the counters are the observer's own.
  Call("tool_call", 1, true);
  const auto before = Samples(collector_->Serialize(ExpositionFormat::kText004));
  for (int i = 0; i < 5; ++i) Call("tool_call", 1, i % 2 == 0);
  const auto after = Samples(collector_->Serialize(ExpositionFormat::kText004));
  for (const auto& [series, value] : before) {
    if (series.find("_total") == std::string::npos && series.find("_bucket") == std::string::npos)
      continue;
    ASSERT_TRUE(after.count(series)) << series;
    EXPECT_GE(after.at(series), value) << series;
  }
  EXPECT_EQ(after.at(R"(laneguard_calls_total{lane="tool_call",outcome="success"})"), 4);
  EXPECT_EQ(after.at(R"(laneguard_calls_total{lane="tool_call",outcome="failure"})"), 2);
}

TEST_F(PrometheusTest, ScrapesRaceWorkerCallsAndLoseNothing) {
  constexpr int kThreads = 4;
  constexpr int kCallsPerThread = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        auto slot = manager_->TryAcquire("task", "tool_call");
        if (slot.ok()) slot->Release(true);
        collector_->ObserveQueueWait("tool_call", 0.001);
      }
    });
  }
  std::map<std::string, double> last;
  const std::string series = R"(laneguard_calls_total{lane="tool_call",outcome="success"})";
  for (int i = 0; i < 50; ++i) {
    const auto now = Samples(collector_->Serialize(i % 2 ? ExpositionFormat::kOpenMetrics1
                                                         : ExpositionFormat::kText004));
    // Histograms stay consistent mid-race: the +Inf bucket is the count.
    EXPECT_EQ(now.at(R"(laneguard_queue_wait_seconds_bucket{lane="tool_call",le="+Inf"})"),
              now.at(R"(laneguard_queue_wait_seconds_count{lane="tool_call"})"));
    if (!last.empty()) EXPECT_GE(now.at(series), last.at(series));
    last = now;
  }
  for (auto& t : threads) t.join();
  const auto final_samples = Samples(collector_->Serialize(ExpositionFormat::kText004));
  const double rejected =
      final_samples.at(R"(laneguard_rejections_total{lane="tool_call",reason="lane_limit"})");
  EXPECT_EQ(final_samples.at(series) + rejected, kThreads * kCallsPerThread);
  EXPECT_EQ(final_samples.at(R"(laneguard_queue_wait_seconds_count{lane="tool_call"})"),
            kThreads * kCallsPerThread);
}

TEST_F(PrometheusTest, OpenMetricsCarriesTheSameSamples) {
  Call("tool_call", 30, true);
  Call("file_read", 7, false);
  collector_->ObserveQueueWait("file_read", 0.02);
  const std::string om = collector_->Serialize(ExpositionFormat::kOpenMetrics1);
  const std::string text = collector_->Serialize(ExpositionFormat::kText004);
  EXPECT_EQ(Samples(om), Samples(text));
  EXPECT_THAT(om, ::testing::EndsWith("# EOF\n"));
  // Counter families are named without _total; their samples keep it.
  EXPECT_THAT(om, HasSubstr("# TYPE laneguard_calls counter\n"));
  EXPECT_THAT(om, HasSubstr("# UNIT laneguard_call_duration_seconds seconds\n"));
  EXPECT_THAT(om, HasSubstr("# UNIT laneguard_rss_bytes bytes\n"));
}

TEST_F(PrometheusTest, LabelValuesAndHelpAreEscapedInOpenMetrics) {
  prometheus::MetricFamily f;
  f.name = "laneguard_test";
  f.help = "a \\ back\nslash";
  f.type = prometheus::MetricType::Gauge;
  prometheus::ClientMetric m;
  m.label = {{"lane", "a\"b\\c\nd"}};
  m.gauge.value = 1.5;
  f.metric.push_back(m);
  EXPECT_EQ(SerializeOpenMetrics({f}),
            "# TYPE laneguard_test gauge\n"
            "# HELP laneguard_test a \\\\ back\\nslash\n"
            "laneguard_test{lane=\"a\\\"b\\\\c\\nd\"} 1.5\n"
            "# EOF\n");
}

TEST(NegotiateFormat, PicksOpenMetricsOnlyWhenPreferred) {
  // What Prometheus 2.42 sends.
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;version=1.0.0,application/"
                            "openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,"
                            "*/*;q=0.1"),
            ExpositionFormat::kOpenMetrics1);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text"), ExpositionFormat::kOpenMetrics1);
  EXPECT_EQ(NegotiateFormat("Application/OpenMetrics-Text; Version=\"1.0.0\""),
            ExpositionFormat::kOpenMetrics1);
  EXPECT_EQ(NegotiateFormat(""), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("*/*"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("text/plain"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;version=0.0.1"),
            ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;q=0.2,text/plain;q=0.5"),
            ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;q=0"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat("application/openmetrics-text;q=banana"), ExpositionFormat::kText004);
  EXPECT_EQ(NegotiateFormat(",,;;=,garbage"), ExpositionFormat::kText004);
  EXPECT_THAT(std::string(ContentType(ExpositionFormat::kOpenMetrics1)),
              StartsWith("application/openmetrics-text; version=1.0.0"));
  EXPECT_THAT(std::string(ContentType(ExpositionFormat::kText004)),
              StartsWith("text/plain; version=0.0.4"));
}

TEST_F(PrometheusTest, HandleNegotiates) {
  const MetricsResponse om = collector_->Handle("application/openmetrics-text; version=1.0.0");
  EXPECT_EQ(om.status, 200);
  EXPECT_EQ(om.content_type, ContentType(ExpositionFormat::kOpenMetrics1));
  EXPECT_THAT(om.body, ::testing::EndsWith("# EOF\n"));
  const MetricsResponse text = collector_->Handle("text/plain");
  EXPECT_EQ(text.content_type, ContentType(ExpositionFormat::kText004));
  EXPECT_THAT(text.body, ::testing::Not(HasSubstr("# EOF")));
}

TEST_F(PrometheusTest, BadBucketsAreNamed) {
  PrometheusOptions options;
  options.duration_buckets_seconds = {1, 0.5};
  auto bad = PrometheusCollector::Create(manager_.get(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "durationBucketsSeconds");
  EXPECT_THAT(bad.error().message(), HasSubstr("0.5"));
  options = {};
  options.queue_wait_buckets_seconds = {};
  bad = PrometheusCollector::Create(manager_.get(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "queueWaitBucketsSeconds");
  EXPECT_FALSE(PrometheusCollector::Create(nullptr).ok());
}

TEST_F(PrometheusTest, ServerServesBothFormatsOnAPickedPort) {
  Call("tool_call", 10, true);
  auto server = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.ok()) << server.error().message();
  ASSERT_GT((*server)->port(), 0);
  EXPECT_EQ((*server)->host(), "127.0.0.1");
  httplib::Client client("127.0.0.1", (*server)->port());
  auto om = client.Get("/metrics", {{"Accept", "application/openmetrics-text; version=1.0.0"}});
  ASSERT_TRUE(om);
  EXPECT_EQ(om->status, 200);
  EXPECT_EQ(om->get_header_value("Content-Type"), ContentType(ExpositionFormat::kOpenMetrics1));
  EXPECT_THAT(om->body,
              HasSubstr(R"(laneguard_calls_total{lane="tool_call",outcome="success"} 1)"));
  auto text = client.Get("/metrics");
  ASSERT_TRUE(text);
  EXPECT_EQ(text->get_header_value("Content-Type"), ContentType(ExpositionFormat::kText004));
  auto missing = client.Get("/other");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  (*server)->Stop();
  (*server)->Stop();  // idempotent
  EXPECT_FALSE(client.Get("/metrics"));
}

// A connected socket to 127.0.0.1:port, or -1.
int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// 64 idle connections that sent half a request head, and one that trickles a byte every 200 ms:
// a scrape still gets its answer promptly, and the trickler is cut off once its head's deadline
// (5 s) has passed, however it keeps sending.
TEST_F(PrometheusTest, ServerKeepsServingScrapesUnderIdleAndTricklingClients) {
  auto server = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.ok()) << server.error().message();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) {
    const int fd = Connect(port);
    ASSERT_GE(fd, 0);
    ASSERT_GT(send(fd, "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL), 0);
    idle.push_back(fd);
  }
  std::atomic<bool> trickler_cut{false};
  std::atomic<bool> stop{false};
  const auto trickle_start = std::chrono::steady_clock::now();
  std::thread trickler([&] {
    const int fd = Connect(port);
    if (fd < 0) return;
    const std::string head = "GET /metrics HTTP/1.1\r\nX-Slow: " + std::string(200, 'a');
    // Bounded: 60 bytes at 200 ms is 12 s, well past the 5 s deadline.
    for (size_t i = 0; i < 60 && !stop; ++i) {
      if (send(fd, &head[i], 1, MSG_NOSIGNAL) < 0) {
        trickler_cut = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    close(fd);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5);
  client.set_read_timeout(5);  // a functional bound: before, the scrape hung until its timeout
  const auto scrape_start = std::chrono::steady_clock::now();
  auto res = client.Get("/metrics");
  const auto scrape_time = std::chrono::steady_clock::now() - scrape_start;
  EXPECT_TRUE(res) << httplib::to_string(res.error());
  if (res) EXPECT_EQ(res->status, 200);
  EXPECT_LT(scrape_time, std::chrono::seconds(5));
  trickler.join();
  EXPECT_TRUE(trickler_cut) << "the trickling client was never disconnected";
  EXPECT_LT(std::chrono::steady_clock::now() - trickle_start, std::chrono::seconds(11));
  stop = true;
  for (int fd : idle) close(fd);
}

TEST_F(PrometheusTest, ServerAnswersOtherMethodsWith405AndHeadWithoutABody) {
  auto server = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.ok()) << server.error().message();
  httplib::Client client("127.0.0.1", (*server)->port());
  auto post = client.Post("/metrics", "x=1", "application/x-www-form-urlencoded");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 405);
  EXPECT_EQ(post->get_header_value("Allow"), "GET, HEAD");
  auto del = client.Delete("/metrics");
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 405);
  auto head = client.Head("/metrics");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_TRUE(head->body.empty());
  auto other = client.Post("/other", "", "text/plain");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
}

// A socket connected to 127.0.0.1:port from the loopback address 127.0.0.`host` (every
// 127.0.0.0/8 address is local on Linux, so each is another client address), or -1.
int ConnectFrom(int port, int host) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  from.sin_addr.s_addr = htonl((127U << 24) | static_cast<uint32_t>(host));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) != 0 ||
      connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Everything the server sends on `fd` until it closes the connection or `timeout` passes.
// `closed` tells which.
std::string ReadUntilClosed(int fd, std::chrono::milliseconds timeout, bool* closed = nullptr) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0))) <= 0) break;
    char buf[4096];
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {  // 0: closed; < 0: reset, closed too
      if (closed != nullptr) *closed = true;
      return out;
    }
    out.append(buf, static_cast<size_t>(n));
  }
  if (closed != nullptr) *closed = false;
  return out;
}

constexpr std::string_view kHalfHead = "GET /metrics HTTP/1.1\r\n";
constexpr std::string_view kWholeRequest = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

// 16 connections from one address that sent half a request: a 17th from the same address closes
// the oldest of them (not one from another address) and is answered; the others stay open.
TEST_F(PrometheusTest, ServerBoundsConnectionsPerAddressClosingTheOldestHalfSentOne) {
  auto server = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.ok()) << server.error().message();
  const int port = (*server)->port();
  const int other = ConnectFrom(port, 3);  // older than all of them, but another address
  ASSERT_GE(other, 0);
  ASSERT_GT(send(other, kHalfHead.data(), kHalfHead.size(), MSG_NOSIGNAL), 0);
  std::vector<int> idle;
  for (int i = 0; i < 16; ++i) {
    const int fd = ConnectFrom(port, 2);
    ASSERT_GE(fd, 0);
    ASSERT_GT(send(fd, kHalfHead.data(), kHalfHead.size(), MSG_NOSIGNAL), 0);
    idle.push_back(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // accepted in this order
  }
  bool closed = false;
  ReadUntilClosed(idle[0], std::chrono::milliseconds(300), &closed);
  EXPECT_FALSE(closed) << "16 connections per address are allowed";

  const int fresh = ConnectFrom(port, 2);
  ASSERT_GE(fresh, 0);
  ASSERT_GT(send(fresh, kWholeRequest.data(), kWholeRequest.size(), MSG_NOSIGNAL), 0);
  const std::string answer = ReadUntilClosed(fresh, std::chrono::seconds(3), &closed);
  EXPECT_TRUE(closed);
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 200"));
  ReadUntilClosed(idle[0], std::chrono::seconds(3), &closed);
  EXPECT_TRUE(closed) << "the oldest half-sent connection from that address was not closed";
  for (size_t i = 1; i < idle.size(); ++i) {
    ReadUntilClosed(idle[i], std::chrono::milliseconds(i == 1 ? 200 : 0), &closed);
    EXPECT_FALSE(closed) << "connection " << i << " was closed too";
  }
  ReadUntilClosed(other, std::chrono::milliseconds(0), &closed);
  EXPECT_FALSE(closed) << "a connection from another address was closed";
  // Stop() closes every connection still open.
  (*server)->Stop();
  ReadUntilClosed(other, std::chrono::seconds(3), &closed);
  EXPECT_TRUE(closed) << "Stop() left a connection open";
  for (int fd : idle) close(fd);
  close(other);
  close(fresh);
}

// 256 connections in all (16 addresses, 16 each) that sent half a request: one more, from a new
// address, closes the oldest of them all and is answered.
TEST_F(PrometheusTest, ServerBoundsConnectionsInTotalClosingTheOldestHalfSentOne) {
  auto server = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.ok()) << server.error().message();
  const int port = (*server)->port();
  std::vector<int> idle;
  for (int host = 2; host < 18; ++host) {
    for (int i = 0; i < 16; ++i) {
      const int fd = ConnectFrom(port, host);
      ASSERT_GE(fd, 0);
      ASSERT_GT(send(fd, kHalfHead.data(), kHalfHead.size(), MSG_NOSIGNAL), 0);
      idle.push_back(fd);
      if (idle.size() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // all accepted
  const int fresh = ConnectFrom(port, 18);
  ASSERT_GE(fresh, 0);
  ASSERT_GT(send(fresh, kWholeRequest.data(), kWholeRequest.size(), MSG_NOSIGNAL), 0);
  bool closed = false;
  const std::string answer = ReadUntilClosed(fresh, std::chrono::seconds(3), &closed);
  EXPECT_TRUE(closed);
  EXPECT_THAT(answer, StartsWith("HTTP/1.1 200"));
  ReadUntilClosed(idle[0], std::chrono::seconds(3), &closed);
  EXPECT_TRUE(closed) << "the oldest half-sent connection was not closed";
  ReadUntilClosed(idle[1], std::chrono::milliseconds(100), &closed);
  EXPECT_FALSE(closed) << "more than one connection was closed";
  for (int fd : idle) close(fd);
  close(fresh);
}

// A request head over the limit (8 KiB) is answered 431, a body over it 413; neither waits for
// the rest of the request, and the connection is closed after the answer.
TEST_F(PrometheusTest, ServerRefusesOversizedRequestHeadsAndBodies) {
  auto server = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 0});
  ASSERT_TRUE(server.ok()) << server.error().message();
  const int port = (*server)->port();
  {
    const int fd = Connect(port);
    ASSERT_GE(fd, 0);
    const std::string head =
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'a');
    ASSERT_GT(send(fd, head.data(), head.size(), MSG_NOSIGNAL), 0);  // and never the end of it
    bool closed = false;
    const std::string answer = ReadUntilClosed(fd, std::chrono::seconds(3), &closed);
    EXPECT_TRUE(closed);
    EXPECT_THAT(answer, StartsWith("HTTP/1.1 431"));
    close(fd);
  }
  {
    const int fd = Connect(port);
    ASSERT_GE(fd, 0);
    const std::string head = "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
    ASSERT_GT(send(fd, head.data(), head.size(), MSG_NOSIGNAL), 0);
    bool closed = false;
    const std::string answer = ReadUntilClosed(fd, std::chrono::seconds(3), &closed);
    EXPECT_TRUE(closed);
    EXPECT_THAT(answer, StartsWith("HTTP/1.1 413"));
    close(fd);
  }
  {
    const int fd = Connect(port);
    ASSERT_GE(fd, 0);
    const std::string garbage = "NOT HTTP AT ALL\r\n\r\n";
    ASSERT_GT(send(fd, garbage.data(), garbage.size(), MSG_NOSIGNAL), 0);
    const std::string answer = ReadUntilClosed(fd, std::chrono::seconds(3));
    EXPECT_THAT(answer, StartsWith("HTTP/1.1 400"));
    close(fd);
  }
  // And the server still answers.
  httplib::Client client("127.0.0.1", port);
  auto res = client.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(PrometheusTest, ServerErrorsNameTheValue) {
  auto bad_host = MetricsServer::Start(collector_, {.host = "300.1.2.3", .port = 0});
  ASSERT_FALSE(bad_host.ok());
  EXPECT_EQ(bad_host.error().field(), "host");
  EXPECT_THAT(bad_host.error().message(), HasSubstr("300.1.2.3"));
  auto bad_port = MetricsServer::Start(collector_, {.host = "127.0.0.1", .port = 70000});
  ASSERT_FALSE(bad_port.ok());
  EXPECT_EQ(bad_port.error().field(), "port");
  EXPECT_THAT(bad_port.error().message(), HasSubstr("70000"));
  auto bad_path = MetricsServer::Start(collector_, {.path = "metrics"});
  ASSERT_FALSE(bad_path.ok());
  EXPECT_EQ(bad_path.error().field(), "path");

  auto first = MetricsServer::Start(collector_);
  ASSERT_TRUE(first.ok());
  const int port = (*first)->port();
  auto taken = MetricsServer::Start(collector_, {.port = port});
  ASSERT_FALSE(taken.ok());
  EXPECT_THAT(taken.error().message(), HasSubstr("127.0.0.1:" + std::to_string(port)));
}

TEST(ParseListenAddress, AcceptsHostPortAndNamesBadParts) {
  auto v4 = ParseListenAddress("127.0.0.1:9464");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 9464);
  auto v6 = ParseListenAddress("[::1]:0");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);
  EXPECT_TRUE(ParseListenAddress("localhost:1").ok());
  for (const char* bad : {"127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
                          "127.0.0.1:80x", "example.org:80", "::1:80", "999.0.0.1:80"}) {
    auto r = ParseListenAddress(bad, "--metrics-listen");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().field(), "--metrics-listen");
    EXPECT_THAT(r.error().message(), HasSubstr(bad));
  }
}

TEST(AlertRules, CommittedFileIsUpToDate) {
  const std::string path =
      std::string(LANEGUARD_SOURCE_DIR) + "/examples/prometheus/laneguard-alerts.yml";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  std::stringstream committed;
  committed << in.rdbuf();
  EXPECT_EQ(committed.str(), GenerateAlertRulesYaml())
      << "regenerate it: build/bin/laneguard_alert_rules > "
         "examples/prometheus/laneguard-alerts.yml";
}

TEST(AlertRules, UseTheThresholdsGiven) {
  AlertThresholds t;
  t.rss_fraction = 0.75;
  t.error_rate = 0.01;
  const std::string yaml = GenerateAlertRulesYaml(t, {.rate_window = "10m"});
  EXPECT_THAT(yaml, HasSubstr("laneguard_rss_bytes > 0.75 * laneguard_rss_limit_bytes"));
  EXPECT_THAT(yaml, HasSubstr(") > 0.01 and"));
  EXPECT_THAT(yaml, HasSubstr("[10m] offset 10m"));
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr("[5m]")));
}

TEST_F(PrometheusTest, GeneratedRulesCoverEveryInProcessAlert) {
  auto alerts = AlertEvaluator::Create(manager_.get()).value();
  const std::string yaml = GenerateAlertRulesYaml();
  std::set<std::string> names;
  for (const Alert& a : alerts->GetAlerts()) names.insert(a.name);
  for (const std::string& name : names) {
    EXPECT_THAT(yaml, HasSubstr("- alert: " + name + "\n")) << name;
  }
  size_t rules = 0;
  for (size_t at = yaml.find("- alert: "); at != std::string::npos;
       at = yaml.find("- alert: ", at + 1)) {
    ++rules;
  }
  EXPECT_EQ(rules, names.size());
}

}  // namespace
}  // namespace laneguard
