#include "cli/job_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "support/limit_growth.h"

namespace laneguard::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(DurationTest, AcceptsMillisecondsSecondsMinutesHours) {
  EXPECT_EQ(ParseDurationMs("500ms", "--timeout").value(), 500);
  EXPECT_EQ(ParseDurationMs("30s", "--timeout").value(), 30000);
  EXPECT_EQ(ParseDurationMs("1.5s", "--timeout").value(), 1500);
  EXPECT_EQ(ParseDurationMs("2m", "--timeout").value(), 120000);
  EXPECT_EQ(ParseDurationMs("1h", "--timeout").value(), 3600000);
  EXPECT_EQ(ParseDurationMs("45", "--timeout").value(), 45000);  // bare: seconds, as timeout(1)
}

TEST(DurationTest, BadValuesNameTheFlagAndTheValue) {
  for (const char* bad : {"", "abc", "10x", "ms", "-5s", "0", "0ms", "nan", "inf", "31d"}) {
    auto parsed = ParseDurationMs(bad, "--timeout");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_THAT(parsed.error().message(), HasSubstr("--timeout"));
    EXPECT_THAT(parsed.error().message(), HasSubstr(std::string("'") + bad + "'"));
  }
  EXPECT_THAT(ParseDurationMs("31000h", "--timeout").error().message(), HasSubstr("30 days"));
}

TEST(JobFileTest, ParsesEveryField) {
  auto jobs = ParseJobs(
      R"({"id": "a", "lane": "critic", "cmd": ["printf", "%s", "a b"], "timeoutMs": 2500, "maxRssMb": 64, "metadata": {"tool": "lint", "n": 3, "ok": true}, "env": {"K": "V"}, "cwd": "/tmp"}

{"cmd": "echo $HOME | wc -c"}
)",
      Config{});
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  ASSERT_EQ(jobs->size(), 2u);
  const Job& a = (*jobs)[0];
  EXPECT_EQ(a.line, 1);
  EXPECT_EQ(a.id, "a");
  EXPECT_EQ(a.lane, "critic");
  EXPECT_EQ(a.spec.argv, (std::vector<std::string>{"printf", "%s", "a b"}));
  EXPECT_FALSE(a.spec.use_shell);
  EXPECT_EQ(a.timeout_ms, 2500);
  EXPECT_EQ(a.spec.max_rss_mb, 64);
  EXPECT_EQ(a.metadata, (Metadata{{"n", "3"}, {"ok", "true"}, {"tool", "lint"}}));
  EXPECT_EQ(a.spec.env, (std::vector<std::pair<std::string, std::string>>{{"K", "V"}}));
  EXPECT_EQ(a.spec.cwd, "/tmp");
  const Job& b = (*jobs)[1];
  EXPECT_EQ(b.line, 3);
  EXPECT_EQ(b.id, "line-3");
  EXPECT_EQ(b.lane, "tool_call");
  EXPECT_TRUE(b.spec.use_shell);
  EXPECT_EQ(b.spec.argv, (std::vector<std::string>{"echo $HOME | wc -c"}));
  EXPECT_FALSE(b.timeout_ms.has_value());
}

// Every bad line is reported with its number and field, all of them at once.
TEST(JobFileTest, BadLinesAreRejectedWithLineAndField) {
  const std::string text =
      "{\"id\": \"ok\", \"cmd\": [\"true\"]}\n"
      "{not json\n"
      "{\"cmd\": [\"true\"], \"lane\": \"gpu\"}\n"
      "{\"lane\": \"critic\"}\n"
      "{\"cmd\": [\"true\"], \"timeoutMs\": -5}\n"
      "{\"cmd\": [\"true\"], \"timeoutMs\": 1.5}\n"
      "{\"cmd\": [\"true\"], \"maxRssMb\": 0}\n"
      "{\"cmd\": [], \"id\": \"e\"}\n"
      "{\"cmd\": [\"a\", 3]}\n"
      "{\"cmd\": \"true\", \"timeout\": 5}\n"
      "{\"id\": \"ok\", \"cmd\": \"true\"}\n"
      "[1, 2]\n"
      "{\"cmd\": \"true\", \"env\": {\"A\": 1}}\n"
      "{\"cmd\": \"true\", \"metadata\": {\"a\": [1]}}\n";
  auto jobs = ParseJobs(text, Config{});
  ASSERT_FALSE(jobs.ok());
  std::vector<std::string> errors;
  for (const Error& e : jobs.error()) errors.push_back(e.message());
  EXPECT_THAT(errors,
              ::testing::ElementsAre(
                  HasSubstr("line 2: not valid JSON"),
                  HasSubstr("line 3: field 'lane': unknown lane 'gpu' (configured: critic"),
                  HasSubstr("line 4: field 'cmd': missing"),
                  HasSubstr("line 5: field 'timeoutMs': must be a positive integer, got -5"),
                  HasSubstr("line 6: field 'timeoutMs': must be a positive integer, got 1.5"),
                  HasSubstr("line 7: field 'maxRssMb': must be a positive integer, got 0"),
                  HasSubstr("line 8: field 'cmd': must be a non-empty argv array"),
                  HasSubstr("line 9: field 'cmd': argv items must be strings, got 3"),
                  HasSubstr("line 10: field 'timeout': unknown field"),
                  HasSubstr("line 11: field 'id': duplicate id 'ok'"),
                  HasSubstr("line 12: a job must be a JSON object, got array"),
                  HasSubstr("line 13: field 'env.A': must be a string, got 1"),
                  HasSubstr("line 14: field 'metadata.a': must be a string, number or boolean")));
}

// priority orders a batch's waiting jobs: "high", "normal" (the default) or "low", nothing else.
TEST(JobFileTest, PriorityIsHighNormalOrLow) {
  auto jobs = ParseJobs(R"({"cmd": "true", "priority": "high"}
{"cmd": "true", "priority": "normal"}
{"cmd": "true", "priority": "low"}
{"cmd": "true"})",
                        Config{});
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  ASSERT_EQ(jobs->size(), 4u);
  EXPECT_EQ((*jobs)[0].priority, Priority::kHigh);
  EXPECT_EQ((*jobs)[1].priority, Priority::kNormal);
  EXPECT_EQ((*jobs)[2].priority, Priority::kLow);
  EXPECT_EQ((*jobs)[3].priority, Priority::kNormal);
}

TEST(JobFileTest, BadPrioritiesNameTheLineTheFieldAndTheValue) {
  auto jobs = ParseJobs(R"({"cmd": "true"}
{"cmd": "true", "priority": "urgent"}
{"cmd": "true", "priority": "High"}
{"cmd": "true", "priority": 2}
{"cmd": "true", "priority": null}
{"cmd": "true", "priorty": "low"})",
                        Config{});
  ASSERT_FALSE(jobs.ok());
  std::vector<std::string> errors;
  for (const Error& e : jobs.error()) errors.push_back(e.message());
  const std::string expected = "field 'priority': must be \"high\", \"normal\" or \"low\", got ";
  EXPECT_THAT(errors, ::testing::ElementsAre(
                          "line 2: " + expected + "\"urgent\"", "line 3: " + expected + "\"High\"",
                          "line 4: " + expected + "2", "line 5: " + expected + "null",
                          HasSubstr("did you mean 'priority'?")));
  EXPECT_EQ(jobs.error()[0].field(), "line 2: priority");
}

TEST(JobFileTest, TimeoutAboveThirtyDaysIsRejected) {
  auto jobs = ParseJobs("{\"cmd\": \"true\", \"timeoutMs\": 99999999999999}", Config{});
  ASSERT_FALSE(jobs.ok());
  EXPECT_THAT(jobs.error()[0].message(), HasSubstr("must be at most 2592000000"));
}

TEST(JobFileTest, EmptyOrMissingFileIsAnError) {
  auto empty = ParseJobs("\n\n", Config{});
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.error()[0].message(), HasSubstr("no jobs"));
  auto missing = LoadJobFile("/laneguard/no/such/jobs.jsonl", Config{});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error()[0].message(), HasSubstr("/laneguard/no/such/jobs.jsonl"));
}

TEST(JobFileTest, LanesComeFromTheConfig) {
  Config config;
  config.lane_concurrency_limits["gpu"] = 1;
  EXPECT_TRUE(ParseJobs("{\"cmd\": \"true\", \"lane\": \"gpu\"}", config).ok());
}

TEST(JobFileTest, ShippedDemoJobsAreValid) {
  auto config = LoadConfigFile(LANEGUARD_SOURCE_DIR "/examples/config/production.json");
  ASSERT_TRUE(config.ok());
  auto jobs = LoadJobFile(LANEGUARD_SOURCE_DIR "/examples/upgrade-jobs.jsonl", *config);
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  std::set<std::string> lanes;
  for (const Job& job : *jobs) lanes.insert(job.lane);
  EXPECT_EQ(lanes.size(), 5u);
}

// --- Untrusted input (issue 16). ---

TEST(DurationTest, AcceptsCompoundDurations) {
  EXPECT_EQ(ParseDurationMs("1m30s", "--timeout").value(), 90'000);
  EXPECT_EQ(ParseDurationMs("1h2m3s", "--timeout").value(), 3'723'000);
  EXPECT_EQ(ParseDurationMs("2m0.5s", "--timeout").value(), 120'500);
  EXPECT_EQ(ParseDurationMs("1s250ms", "--timeout").value(), 1'250);
  EXPECT_EQ(ParseDurationMs("250ms", "--timeout").value(), 250);
  EXPECT_EQ(ParseDurationMs("1.5s", "--timeout").value(), 1'500);
  EXPECT_EQ(ParseDurationMs("1.5", "--timeout").value(), 1'500);
}

TEST(DurationTest, RejectsGarbageAroundCompoundDurations) {
  for (const char* bad : {"1m30", "m30s", "1m 30s", " 1s", "1s ", "1.2.3s", "1e3s", "+1s", "1mss",
                          "1m-30s", "s", "."}) {
    auto parsed = ParseDurationMs(bad, "--timeout");
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_THAT(parsed.error().message(), HasSubstr(std::string("--timeout: '") + bad + "'"));
  }
}

// 100,000 levels inside metadata: the error message used to dump() it recursively (SIGSEGV).
TEST(JobFileTest, DeeplyNestedValuesAreErrorsNotCrashes) {
  const size_t depth = 100'000;
  const std::string deep = std::string(depth, '[') + "1" + std::string(depth, ']');
  for (const std::string& line : {R"({"id":"a","cmd":"true","metadata":{"k":)" + deep + "}}",
                                  R"({"id":"a","cmd":)" + deep + "}", deep}) {
    auto jobs = ParseJobs(line, Config{});
    ASSERT_FALSE(jobs.ok());
    EXPECT_LE(jobs.error()[0].message().size(), 400u);
  }
}

TEST(JobFileTest, HugeValuesAreShownAsAShortPrefix) {
  const std::string huge(4 << 20, 'x');
  for (const std::string& line :
       {R"({"cmd":"true","id":[")" + huge + R"("]})", R"({"cmd":"true","lane":")" + huge + R"("})",
        R"({"cmd":"true",")" + huge + R"(":1})",
        R"({"cmd":"true","env":{"A":[")" + huge + R"("]}})",
        R"({"cmd":"true","timeoutMs":")" + huge + R"("})",
        R"({"cmd":"true","id":")" + huge + R"("})" + "\n" + R"({"cmd":"true","id":")" + huge +
            R"("})"}) {
    auto jobs = ParseJobs(line, Config{});
    ASSERT_FALSE(jobs.ok());
    const std::string message = jobs.error().back().message();
    EXPECT_LE(message.size(), 400u) << message.substr(0, 1000);
    EXPECT_THAT(message, HasSubstr("xxxxxxxxxx"));
    EXPECT_THAT(message, HasSubstr("…"));
  }
}

TEST(JobFileTest, NulInAnythingThatReachesTheProcessIsRejected) {
  struct Case {
    std::string line;
    std::string field;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"id":"a","cmd":["tr\u0000ue"]})", "cmd"},
           {R"({"id":"a","cmd":["echo","a\u0000b"]})", "cmd"},
           {R"({"id":"a","cmd":"tr\u0000ue"})", "cmd"},
           {R"({"id":"a","cmd":"true","env":{"K":"v\u0000w"}})", "env.K"},
           {R"({"id":"a","cmd":"true","env":{"K\u0000L":"v"}})", "env"},
           {R"({"id":"a","cmd":"true","cwd":"/tmp\u0000/x"})", "cwd"},
       }) {
    auto jobs = ParseJobs(c.line, Config{});
    ASSERT_FALSE(jobs.ok()) << c.line;
    EXPECT_EQ(jobs.error()[0].field(), "line 1: " + c.field) << c.line;
    EXPECT_THAT(jobs.error()[0].message(), HasSubstr("NUL")) << c.line;
  }
}

// The config accepts 1.0 for an integer; a job file does the same.
TEST(JobFileTest, IntegralFloatsAreIntegers) {
  auto jobs = ParseJobs(R"({"cmd":"true","timeoutMs":1500.0,"maxRssMb":256.0})", Config{});
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  EXPECT_EQ((*jobs)[0].timeout_ms, 1500);
  EXPECT_EQ((*jobs)[0].spec.max_rss_mb, 256);
  auto fraction = ParseJobs(R"({"cmd":"true","timeoutMs":1500.5})", Config{});
  ASSERT_FALSE(fraction.ok());
  EXPECT_THAT(fraction.error()[0].message(), HasSubstr("positive integer"));
  auto huge = ParseJobs(R"({"cmd":"true","maxRssMb":1e20})", Config{});
  ASSERT_FALSE(huge.ok());
  EXPECT_THAT(huge.error()[0].message(), HasSubstr("must be at most"));
}

TEST(JobFileTest, JsonErrorsSayWhereAndWhy) {
  auto jobs = ParseJobs("{\"cmd\": \"true\"}\n{\"cmd\": tru}\n", Config{});
  ASSERT_FALSE(jobs.ok());
  const std::string message = jobs.error()[0].message();
  EXPECT_THAT(message, HasSubstr("line 2: not valid JSON"));
  EXPECT_THAT(message, HasSubstr("column"));
  EXPECT_THAT(message, HasSubstr("tru"));  // nlohmann's "last read"
}

TEST(JobFileTest, DuplicateFieldsAreWarnedAbout) {
  std::vector<std::string> warnings;
  auto jobs =
      ParseJobs(R"({"cmd":"false","cmd":"true","env":{"K":"1","K":"2"}})", Config{}, &warnings);
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  EXPECT_EQ((*jobs)[0].spec.argv, std::vector<std::string>{"true"});  // the last one wins
  EXPECT_THAT(warnings, ::testing::ElementsAre(HasSubstr("line 1: field 'cmd'"),
                                               HasSubstr("line 1: field 'env.K'")));
}

TEST(JobFileTest, MisspelledLanesAndFieldsGetASuggestion) {
  auto jobs = ParseJobs(R"({"cmd":"true","lane":"critc","timeutMs":5})", Config{});
  ASSERT_FALSE(jobs.ok());
  std::string all;
  for (const Error& e : jobs.error()) all += e.message() + "\n";
  EXPECT_THAT(all, HasSubstr("did you mean 'critic'?"));
  EXPECT_THAT(all, HasSubstr("did you mean 'timeoutMs'?"));
}

TEST(JobFileTest, PrintedErrorsAreCapped) {
  std::string text;
  const int bad_lines = 1000;
  for (int i = 0; i < bad_lines; ++i) text += "{}\n";
  auto jobs = ParseJobs(text, Config{});
  ASSERT_FALSE(jobs.ok());
  const std::string printed = FormatJobErrors(jobs.error(), "p: ");
  const auto lines = std::count(printed.begin(), printed.end(), '\n');
  EXPECT_EQ(lines, static_cast<long>(kMaxPrintedJobErrors) + 1);
  EXPECT_THAT(printed,
              HasSubstr("p: and " + std::to_string(jobs.error().size() - kMaxPrintedJobErrors) +
                        " more errors"));
  EXPECT_EQ(FormatJobErrors({jobs.error()[0]}, "p: "), "p: " + jobs.error()[0].message() + "\n");
}

TEST(JobFileTest, UnreadableFilesSayWhy) {
  auto dir = LoadJobFile("/tmp", Config{});
  ASSERT_FALSE(dir.ok());
  EXPECT_THAT(dir.error()[0].message(), HasSubstr("is a directory"));
  EXPECT_THAT(dir.error()[0].message(), Not(HasSubstr("JSON")));
  auto missing = LoadJobFile("/laneguard/no/such/jobs.jsonl", Config{});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error()[0].message(), HasSubstr(std::strerror(ENOENT)));
  EXPECT_EQ(missing.error()[0].code(), ErrorCode::kNotFound);
}

// "-" is standard input, as for most Unix tools.
TEST(JobFileTest, DashReadsStandardInput) {
  char path[] = "/tmp/laneguard_job_stdin_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text = "{\"id\": \"from-stdin\", \"cmd\": \"true\"}\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  lseek(fd, 0, SEEK_SET);
  const int saved = dup(STDIN_FILENO);
  dup2(fd, STDIN_FILENO);
  auto jobs = LoadJobFile("-", Config{});
  dup2(saved, STDIN_FILENO);
  close(saved);
  close(fd);
  unlink(path);
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  EXPECT_EQ((*jobs)[0].id, "from-stdin");
}

// A pipe that a thread fills with `chunk` `times` times (or until the reader goes away), read
// through /dev/fd/N as a user's `batch <(...)` would be. The input's size is known only by
// reading it.
class PipeFeeder {
 public:
  PipeFeeder(std::string head, std::string chunk, size_t times) {
    old_sigpipe_ = std::signal(SIGPIPE, SIG_IGN);  // a reader that stops early is expected
    EXPECT_EQ(pipe(fds_), 0);
    writer_ = std::thread([this, head = std::move(head), chunk = std::move(chunk), times] {
      if (WriteAll(head))
        for (size_t i = 0; i < times && WriteAll(chunk); ++i) {
        }
      close(fds_[1]);
    });
  }
  ~PipeFeeder() {
    close(fds_[0]);  // the writer, if still blocked, gets EPIPE
    writer_.join();
    std::signal(SIGPIPE, old_sigpipe_);
  }
  std::string path() const { return "/dev/fd/" + std::to_string(fds_[0]); }

 private:
  bool WriteAll(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = write(fds_[1], data.data(), data.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  int fds_[2] = {-1, -1};
  std::thread writer_;
  void (*old_sigpipe_)(int) = SIG_DFL;
};

// A job line of exactly `bytes` bytes (without the newline).
std::string JobLineOfSize(size_t bytes) {
  const std::string head = R"({"cmd":"true","id":")", tail = R"("})";
  return head + std::string(bytes - head.size() - tail.size(), 'x') + tail;
}

TEST(JobFileCapsTest, AJobLineLongerThanTheCapIsRefusedWhileReading) {
  {
    PipeFeeder feeder(JobLineOfSize(kMaxJobLineBytes + 1) + "\n", "", 0);
    auto jobs = LoadJobFile(feeder.path(), Config{});
    ASSERT_FALSE(jobs.ok());
    ASSERT_EQ(jobs.error().size(), 1u);
    EXPECT_EQ(jobs.error()[0].field(), "line 1");
    EXPECT_THAT(jobs.error()[0].message(), HasSubstr("longer than 1 MiB"));
    EXPECT_THAT(jobs.error()[0].message(), HasSubstr("put large data in a file"));
  }
  // At the cap exactly, after a good line: still a job.
  PipeFeeder feeder("{\"cmd\":\"true\"}\n" + JobLineOfSize(kMaxJobLineBytes) + "\n", "", 0);
  auto jobs = LoadJobFile(feeder.path(), Config{});
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  EXPECT_EQ(jobs->size(), 2u);
}

// `batch -` fed forever: blank lines hold nothing, so only the cap on the whole input stops it.
TEST(JobFileCapsTest, AnInputLargerThanTheCapIsRefusedWhileReading) {
  const std::string blank_line(4095, ' ');
  const size_t lines_past_the_cap = kMaxJobFileBytes / 4096 + 16;
  PipeFeeder feeder("{\"cmd\":\"true\"}\n", blank_line + "\n", lines_past_the_cap);
  auto jobs = LoadJobFile(feeder.path(), Config{});
  ASSERT_FALSE(jobs.ok());
  ASSERT_EQ(jobs.error().size(), 1u);
  EXPECT_EQ(jobs.error()[0].field(), "");
  EXPECT_EQ(jobs.error()[0].code(), ErrorCode::kInvalidArgument);
  EXPECT_THAT(jobs.error()[0].message(), HasSubstr(feeder.path() + ": larger than 256 MiB"));
  EXPECT_THAT(jobs.error()[0].message(), HasSubstr("split the jobs into several files"));
}

// A small FIFO or pipe (`batch <(generate-jobs)`) reads like a file: no size from stat.
TEST(JobFileCapsTest, ASmallPipeWorksLikeAFile) {
  PipeFeeder feeder("{\"id\":\"a\",\"cmd\":\"true\"}\n{\"id\":\"b\",\"cmd\":\"true\"}", "", 0);
  auto jobs = LoadJobFile(feeder.path(), Config{});
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].message();
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[1].id, "b");
  EXPECT_EQ((*jobs)[1].line, 2);
}

using testing_support::LimitGrowth;

// /dev/zero never ends and has no newline: the line cap stops it after 1 MiB.
TEST(JobFileCapsTest, DevZeroIsRefusedPromptly) {
  EXPECT_EXIT(
      {
        LimitGrowth(size_t{512} << 20);
        auto jobs = LoadJobFile("/dev/zero", Config{});
        std::fprintf(stderr, "%s\n", jobs.ok() ? "loaded" : jobs.error()[0].message().c_str());
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "line 1: longer than 1 MiB");
}

}  // namespace
}  // namespace laneguard::cli
