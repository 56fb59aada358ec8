#include "laneguard/observe/json_logger.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/metrics.h"
#include "laneguard/observer.h"
#include "support/file_size_limit.h"
#include "support/tmp_stream.h"

namespace laneguard {
namespace {

using nlohmann::json;
using testing_support::TmpStream;

constexpr int64_t kStart = 1761166800000000000;  // 2025-10-22T21:00:00.000Z

TEST(JsonLogger, WritesOneTypedJsonObjectPerLine) {
  ManualClock clock(kStart);
  clock.AdvanceMs(1234);
  TmpStream out;
  ASSERT_NE(out.get(), nullptr);
  JsonLogger log({.min_level = LogLevel::kInfo, .clock = &clock}, out.get());
  const std::string owned = "task-owned";
  log.LogInfo("Worker call slot acquired", {{"taskId", "task-1"},
                                            {"owned", owned},
                                            {"count", int64_t{42}},
                                            {"small", 7},
                                            {"negative", int64_t{-9000000000}},
                                            {"ratio", 0.5},
                                            {"whole", 3.0},
                                            {"flag", true},
                                            {"off", false}});
  auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 1u);
  // The fixed keys come first.
  EXPECT_EQ(lines[0].rfind(R"({"ts":"2025-10-22T21:00:01.234Z","level":"info","msg":)", 0), 0u)
      << lines[0];
  json j = json::parse(lines[0]);
  EXPECT_EQ(j["ts"], "2025-10-22T21:00:01.234Z");
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["msg"], "Worker call slot acquired");
  ASSERT_TRUE(j["taskId"].is_string());
  EXPECT_EQ(j["taskId"], "task-1");
  EXPECT_EQ(j["owned"], "task-owned");
  ASSERT_TRUE(j["count"].is_number_integer());
  EXPECT_EQ(j["count"].get<int64_t>(), 42);
  ASSERT_TRUE(j["small"].is_number_integer());
  EXPECT_EQ(j["small"].get<int64_t>(), 7);
  EXPECT_EQ(j["negative"].get<int64_t>(), -9000000000);
  ASSERT_TRUE(j["ratio"].is_number_float());
  EXPECT_EQ(j["ratio"].get<double>(), 0.5);
  ASSERT_TRUE(j["whole"].is_number_float());  // a double stays a double even when integral
  EXPECT_EQ(j["whole"].get<double>(), 3.0);
  ASSERT_TRUE(j["flag"].is_boolean());
  EXPECT_EQ(j["flag"], true);
  EXPECT_EQ(j["off"], false);
  EXPECT_EQ(j.size(), 12u);
  EXPECT_EQ(log.lines_written(LogLevel::kInfo), 1u);
  EXPECT_EQ(log.write_errors(), 0u);
}

TEST(JsonLogger, TimestampFollowsTheClock) {
  ManualClock clock(kStart);
  TmpStream out;
  JsonLogger log({.clock = &clock}, out.get());
  log.LogInfo("a");
  clock.AdvanceMs(61'001);
  log.LogInfo("b");
  auto lines = out.Json();
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["ts"], "2025-10-22T21:00:00.000Z");
  EXPECT_EQ(lines[1]["ts"], "2025-10-22T21:01:01.001Z");
}

TEST(JsonLogger, LevelFilterDropsLinesBelowMinLevel) {
  ManualClock clock(kStart);
  TmpStream out;
  JsonLogger log({.min_level = LogLevel::kWarning, .clock = &clock}, out.get());
  EXPECT_FALSE(log.Enabled(LogLevel::kDebug));
  EXPECT_FALSE(log.Enabled(LogLevel::kInfo));
  EXPECT_TRUE(log.Enabled(LogLevel::kWarning));
  EXPECT_TRUE(log.Enabled(LogLevel::kError));
  log.LogDebug("debug line");
  log.LogInfo("info line");
  log.LogWarning("warning line");
  log.LogError("error line");
  log.Log(LogLevel::kError, "second error");
  auto lines = out.Json();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["level"], "warning");
  EXPECT_EQ(lines[0]["msg"], "warning line");
  EXPECT_EQ(lines[1]["level"], "error");
  EXPECT_EQ(lines[2]["msg"], "second error");
  EXPECT_EQ(log.lines_written(LogLevel::kDebug), 0u);
  EXPECT_EQ(log.lines_written(LogLevel::kInfo), 0u);
  EXPECT_EQ(log.lines_written(LogLevel::kWarning), 1u);
  EXPECT_EQ(log.lines_written(LogLevel::kError), 2u);
}

TEST(JsonLogger, DebugLevelWritesEverything) {
  ManualClock clock(kStart);
  TmpStream out;
  JsonLogger log({.min_level = LogLevel::kDebug, .clock = &clock}, out.get());
  log.LogDebug("d");
  log.LogDebug("d");
  log.LogInfo("i");
  log.LogWarning("w");
  log.LogError("e");
  auto lines = out.Json();
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0]["level"], "debug");
  EXPECT_EQ(log.lines_written(LogLevel::kDebug), 2u);
  EXPECT_EQ(log.lines_written(LogLevel::kInfo), 1u);
  EXPECT_EQ(log.lines_written(LogLevel::kWarning), 1u);
  EXPECT_EQ(log.lines_written(LogLevel::kError), 1u);
}

TEST(JsonLogger, ContextFieldsCannotOverrideFixedKeys) {
  ManualClock clock(kStart);
  TmpStream out;
  JsonLogger log({.clock = &clock}, out.get());
  log.LogInfo("real message",
              {{"level", "error"}, {"msg", "forged"}, {"ts", "1999-01-01T00:00:00.000Z"}});
  auto lines = out.Lines();
  ASSERT_EQ(lines.size(), 1u);
  // Exactly one "level" key in the text (a parser would silently keep one of two duplicates).
  const std::string& text = lines[0];
  EXPECT_EQ(text.find(R"("level":)"), text.rfind(R"("level":)")) << text;
  EXPECT_EQ(text.find(R"("msg":)"), text.rfind(R"("msg":)")) << text;
  json j = json::parse(text);
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["msg"], "real message");
  EXPECT_EQ(j["ts"], "2025-10-22T21:00:00.000Z");
  EXPECT_EQ(j["ctx.level"], "error");
  EXPECT_EQ(j["ctx.msg"], "forged");
  EXPECT_EQ(log.lines_written(LogLevel::kInfo), 1u);
  EXPECT_EQ(log.lines_written(LogLevel::kError), 0u);
}

TEST(JsonLogger, InvalidUtf8DoesNotThrowOrLoseTheLine) {
  ManualClock clock(kStart);
  TmpStream out;
  JsonLogger log({.clock = &clock}, out.get());
  const std::string bad = "task-\xff\xfe-\xc3";  // invalid bytes and a truncated sequence
  EXPECT_NO_THROW(log.LogInfo(bad, {{"taskId", bad}, {"ok", "fine"}}));
  EXPECT_NO_THROW(log.LogInfo("next"));
  auto lines = out.Json();
  ASSERT_EQ(lines.size(), 2u);
  const std::string task_id = lines[0]["taskId"];
  EXPECT_EQ(task_id.rfind("task-", 0), 0u) << task_id;
  EXPECT_NE(task_id.find("\xef\xbf\xbd"), std::string::npos) << "expected U+FFFD replacement";
  EXPECT_EQ(lines[0]["ok"], "fine");
  EXPECT_TRUE(lines[0]["msg"].is_string());
  EXPECT_EQ(lines[1]["msg"], "next");
  EXPECT_EQ(log.lines_written(LogLevel::kInfo), 2u);
  EXPECT_EQ(log.write_errors(), 0u);
}

TEST(JsonLogger, ConcurrentLinesNeverInterleave) {
  ManualClock clock(kStart);
  TmpStream out;
  JsonLogger log({.clock = &clock}, out.get());
  constexpr int kThreads = 4, kPerThread = 500;
  // A long field makes a torn write likely if lines were not serialized.
  const std::string padding(300, 'x');
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i)
        log.LogInfo("concurrent", {{"thread", int64_t{t}}, {"i", int64_t{i}}, {"pad", padding}});
    });
  }
  for (auto& th : threads) th.join();
  auto lines = out.Json();
  ASSERT_EQ(lines.size(), size_t{kThreads * kPerThread});
  std::set<std::pair<int64_t, int64_t>> seen;
  for (const json& j : lines) {
    ASSERT_EQ(j["msg"], "concurrent");
    ASSERT_EQ(j["pad"], padding);
    seen.emplace(j["thread"].get<int64_t>(), j["i"].get<int64_t>());
  }
  EXPECT_EQ(seen.size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(log.lines_written(LogLevel::kInfo), uint64_t{kThreads * kPerThread});
  EXPECT_EQ(log.write_errors(), 0u);
}

TEST(JsonLogger, ParseLogLevelAcceptsKnownNames) {
  struct Case {
    const char* text;
    LogLevel level;
  };
  for (const Case& c : {Case{"debug", LogLevel::kDebug}, Case{"info", LogLevel::kInfo},
                        Case{"warning", LogLevel::kWarning}, Case{"warn", LogLevel::kWarning},
                        Case{"error", LogLevel::kError}}) {
    auto r = ParseLogLevel(c.text);
    ASSERT_TRUE(r.ok()) << c.text;
    EXPECT_EQ(*r, c.level) << c.text;
  }
  for (LogLevel level : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    auto r = ParseLogLevel(ToString(level));
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, level);
  }
}

TEST(JsonLogger, ParseLogLevelRejectsUnknownNamesNamingTheValue) {
  for (const char* bad : {"verbose", "", "fatal"}) {
    auto r = ParseLogLevel(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().field(), "logLevel");
    EXPECT_EQ(r.error().value(), "\"" + std::string(bad) + "\"");
    EXPECT_NE(r.error().message().find("logLevel"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("\"" + std::string(bad) + "\""), std::string::npos)
        << r.error().message();
  }
}

TEST(JsonLogger, OpenFileOnBadPathNamesThePath) {
  const std::string path = "/nonexistent-laneguard-dir/sub/log.jsonl";
  auto r = JsonLogger::OpenFile({}, path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find(path), std::string::npos) << r.error().message();
  EXPECT_EQ(r.error().value(), "\"" + path + "\"") << "value is JSON text, as result.h says";
}

TEST(JsonLogger, OpenFileAppends) {
  char tmpl[] = "/tmp/laneguard_log_test_XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  close(fd);
  const std::string path = tmpl;
  ManualClock clock(kStart);
  for (int round = 0; round < 2; ++round) {
    auto r = JsonLogger::OpenFile({.clock = &clock}, path);
    ASSERT_TRUE(r.ok()) << r.error().message();
    (*r)->LogInfo("line", {{"round", int64_t{round}}});
  }  // the logger closes its file
  std::FILE* f = std::fopen(path.c_str(), "r");
  ASSERT_NE(f, nullptr);
  std::vector<json> lines;
  char buf[1024];
  while (std::fgets(buf, sizeof buf, f)) lines.push_back(json::parse(buf));
  std::fclose(f);
  std::filesystem::remove(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["round"], 0);
  EXPECT_EQ(lines[1]["round"], 1);
}

TEST(JsonLogger, WriteErrorsOnFullDeviceAreCountedNotThrown) {
  std::FILE* full = std::fopen("/dev/full", "w");
  if (full == nullptr) GTEST_SKIP() << "/dev/full is not available";
  {
    JsonLogger log({}, full);
    EXPECT_NO_THROW(log.LogInfo("lost", {{"k", int64_t{1}}}));
    EXPECT_NO_THROW(log.LogError("lost too"));
    EXPECT_EQ(log.write_errors(), 2u);
    EXPECT_EQ(log.last_write_error(), "No space left on device");
    EXPECT_EQ(log.lines_written(LogLevel::kInfo), 0u);
    EXPECT_EQ(log.lines_written(LogLevel::kError), 0u);
  }
  std::fclose(full);
}

// A disk that fills up mid-line must not leave a cut line: every line in the file is whole JSON,
// and every line that is not there is counted, with the reason.
TEST(JsonLogger, AFileThatFillsUpHoldsOnlyWholeLinesAndCountsTheRest) {
  const std::string path =
      ::testing::TempDir() + "laneguard_full_log_" + std::to_string(getpid()) + ".jsonl";
  std::filesystem::remove(path);
  constexpr int kLines = 100;
  const std::string padding(100, 'x');
  {
    auto log = JsonLogger::OpenFile({}, path);
    ASSERT_TRUE(log.ok());
    {
      testing_support::FileSizeLimit limit(4000);  // not a multiple of any line's length
      for (int i = 0; i < kLines; ++i)
        (*log)->LogInfo("line", {{"i", int64_t{i}}, {"padding", padding}});
    }
    EXPECT_GT((*log)->write_errors(), 0u);
    EXPECT_EQ((*log)->last_write_error(), "File too large");
    EXPECT_EQ((*log)->lines_written(LogLevel::kInfo) + (*log)->write_errors(), uint64_t{kLines});
    std::FILE* f = std::fopen(path.c_str(), "r");
    ASSERT_NE(f, nullptr);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    std::fclose(f);
    size_t lines = 0;
    for (size_t start = 0; start < text.size(); ++lines) {
      const size_t end = text.find('\n', start);
      ASSERT_NE(end, std::string::npos) << "cut last line: " << text.substr(start);
      EXPECT_TRUE(json::parse(text.substr(start, end - start), nullptr, false).is_object());
      start = end + 1;
    }
    EXPECT_EQ(lines, (*log)->lines_written(LogLevel::kInfo));
  }
  std::filesystem::remove(path);
}

TEST(JsonLogger, WriteErrorsOnReadOnlyStreamAreCountedNotThrown) {
  std::FILE* ro = std::fopen("/dev/null", "r");
  ASSERT_NE(ro, nullptr);
  {
    JsonLogger log({}, ro);
    EXPECT_NO_THROW(log.LogWarning("cannot be written"));
    EXPECT_EQ(log.write_errors(), 1u);
    EXPECT_EQ(log.lines_written(LogLevel::kWarning), 0u);
    log.LogDebug("filtered out, not an error");
    EXPECT_EQ(log.write_errors(), 1u);
  }
  std::fclose(ro);
}

// --- LoggingObserver ---

class JsonLoggingObserverTest : public testing::Test {
 protected:
  JsonLoggingObserverTest()
      : clock_(kStart),
        logger_(std::make_shared<JsonLogger>(
            JsonLogger::Options{.min_level = LogLevel::kDebug, .clock = &clock_}, out_.get())),
        observer_(logger_) {}

  json Emit(const CallEvent& e) {
    observer_.OnEvent(e);
    auto lines = out_.Json();
    EXPECT_EQ(lines.size(), ++emitted_);
    return lines.empty() ? json() : lines.back();
  }

  CallEvent BaseEvent(EventKind kind) {
    CallEvent e;
    e.kind = kind;
    e.time_unix_nanos = clock_.UnixNanos();
    e.call_id = 42;
    e.task_id = "task-7";
    e.lane = "file_write";
    e.global_active = 5;
    e.lane_active = 2;
    e.global_limit = 32;
    e.lane_limit = 4;
    e.timeout_ms = 30000;
    return e;
  }

  ManualClock clock_;
  TmpStream out_;
  std::shared_ptr<JsonLogger> logger_;
  LoggingObserver observer_;
  size_t emitted_ = 0;
};

TEST_F(JsonLoggingObserverTest, AcquiredIsInfoWithContext) {
  clock_.AdvanceMs(5);
  Metadata metadata = {{"tool", "grep"}};
  CallEvent e = BaseEvent(EventKind::kAcquired);
  e.metadata = &metadata;
  json j = Emit(e);
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["msg"], "Worker call slot acquired");
  EXPECT_EQ(j["ts"], "2025-10-22T21:00:00.005Z");
  EXPECT_EQ(j["contextId"], "call-42");
  EXPECT_EQ(j["taskId"], "task-7");
  EXPECT_EQ(j["lane"], "file_write");
  ASSERT_TRUE(j["globalConcurrency"].is_number_integer());
  EXPECT_EQ(j["globalConcurrency"], 5);
  EXPECT_EQ(j["laneConcurrency"], 2);
  EXPECT_EQ(j["timeoutMs"], 30000);
  EXPECT_EQ(logger_->lines_written(LogLevel::kInfo), 1u);
}

TEST_F(JsonLoggingObserverTest, RejectedIsWarningWithReason) {
  CallEvent e = BaseEvent(EventKind::kRejected);
  e.call_id = 0;
  e.reason = RejectReason::kGlobalLimit;
  e.message = "global concurrency limit 32 reached";
  e.global_active = 32;
  json j = Emit(e);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"], "Worker call rejected");
  EXPECT_EQ(j["reason"], "global_limit");
  EXPECT_EQ(j["detail"], "global concurrency limit 32 reached");
  EXPECT_EQ(j["taskId"], "task-7");
  EXPECT_EQ(j["lane"], "file_write");
  EXPECT_EQ(j["globalConcurrency"], 32);

  e.reason = RejectReason::kMemoryLimit;
  json m = Emit(e);
  EXPECT_EQ(m["reason"], "memory_limit");
  EXPECT_EQ(logger_->lines_written(LogLevel::kWarning), 2u);
}

TEST_F(JsonLoggingObserverTest, SuccessfulReleaseIsInfo) {
  WorkerCallMetrics record;
  record.call_id = "call-42";
  record.task_id = "task-7";
  record.lane = "file_write";
  record.duration_ms = 12.5;
  record.success = true;
  record.rss_delta_mb = 0.25;
  CallEvent e = BaseEvent(EventKind::kReleased);
  e.record = &record;
  e.global_active = 4;
  json j = Emit(e);
  EXPECT_EQ(j["level"], "info");
  EXPECT_EQ(j["msg"], "Worker call completed");
  EXPECT_EQ(j["contextId"], "call-42");
  EXPECT_EQ(j["taskId"], "task-7");
  EXPECT_EQ(j["lane"], "file_write");
  EXPECT_EQ(j["success"], true);
  ASSERT_TRUE(j["durationMs"].is_number_float());
  EXPECT_EQ(j["durationMs"].get<double>(), 12.5);
  EXPECT_EQ(j["timeoutReached"], false);
  EXPECT_EQ(j["rssDeltaMb"].get<double>(), 0.25);
  EXPECT_EQ(j["globalConcurrency"], 4);
}

TEST_F(JsonLoggingObserverTest, FailedReleaseIsWarning) {
  WorkerCallMetrics record;
  record.call_id = "call-43";
  record.task_id = "task-8";
  record.lane = "critic";
  record.duration_ms = 301000;
  record.success = false;
  record.error_type = "TimeoutError";
  record.timeout_reached = true;
  CallEvent e = BaseEvent(EventKind::kReleased);
  e.call_id = 43;
  e.record = &record;
  json j = Emit(e);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"], "Worker call failed");
  EXPECT_EQ(j["contextId"], "call-43");
  EXPECT_EQ(j["taskId"], "task-8");
  EXPECT_EQ(j["lane"], "critic");
  EXPECT_EQ(j["success"], false);
  EXPECT_EQ(j["errorType"], "TimeoutError");
  EXPECT_EQ(j["timeoutReached"], true);
  EXPECT_EQ(logger_->lines_written(LogLevel::kWarning), 1u);
  EXPECT_EQ(logger_->lines_written(LogLevel::kInfo), 0u);
}

TEST_F(JsonLoggingObserverTest, TimeoutWarningIsWarningAndEscalationIsError) {
  CallEvent w = BaseEvent(EventKind::kTimeoutWarning);
  w.message = "call-42 passed its 30000 ms timeout";
  json jw = Emit(w);
  EXPECT_EQ(jw["level"], "warning");
  EXPECT_EQ(jw["msg"], "Worker call timeout warning");
  EXPECT_EQ(jw["contextId"], "call-42");
  EXPECT_EQ(jw["timeoutMs"], 30000);
  EXPECT_EQ(jw["detail"], "call-42 passed its 30000 ms timeout");

  clock_.AdvanceMs(15000);
  CallEvent x = BaseEvent(EventKind::kTimeoutEscalation);
  x.message = "call-42 passed its hard deadline";
  json jx = Emit(x);
  EXPECT_EQ(jx["level"], "error");
  EXPECT_EQ(jx["msg"], "Worker call timeout escalation");
  EXPECT_EQ(jx["ts"], "2025-10-22T21:00:15.000Z");
  EXPECT_EQ(jx["contextId"], "call-42");
  EXPECT_EQ(jx["taskId"], "task-7");
  EXPECT_EQ(jx["lane"], "file_write");
  EXPECT_EQ(logger_->lines_written(LogLevel::kError), 1u);
}

TEST_F(JsonLoggingObserverTest, HeapWarningIsWarningWithHeapFigure) {
  MemorySnapshot memory;
  memory.heap_used_mb = 432.5;
  CallEvent e = BaseEvent(EventKind::kHeapWarning);
  e.memory = &memory;
  e.message = "heap 432.5 MB above 400 MB";
  json j = Emit(e);
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"], "Heap usage above warning threshold");
  EXPECT_EQ(j["heapUsedMb"].get<double>(), 432.5);
  EXPECT_EQ(j["contextId"], "call-42");
}

TEST_F(JsonLoggingObserverTest, MinLevelAppliesToObserverLines) {
  TmpStream out;
  auto logger = std::make_shared<JsonLogger>(
      JsonLogger::Options{.min_level = LogLevel::kError, .clock = &clock_}, out.get());
  LoggingObserver observer(logger);
  observer.OnEvent(BaseEvent(EventKind::kAcquired));
  CallEvent rejected = BaseEvent(EventKind::kRejected);
  observer.OnEvent(rejected);
  observer.OnEvent(BaseEvent(EventKind::kTimeoutEscalation));
  auto lines = out.Json();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["msg"], "Worker call timeout escalation");
}

}  // namespace
}  // namespace laneguard
