#include "cli/job_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

namespace laneguard::cli {
namespace {

using ::testing::HasSubstr;

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
    EXPECT_THAT(parsed.error(), HasSubstr("--timeout"));
    EXPECT_THAT(parsed.error(), HasSubstr(std::string("'") + bad + "'"));
  }
  EXPECT_THAT(ParseDurationMs("31000h", "--timeout").error(), HasSubstr("30 days"));
}

TEST(JobFileTest, ParsesEveryField) {
  auto jobs = ParseJobs(
      R"({"id": "a", "lane": "critic", "cmd": ["printf", "%s", "a b"], "timeoutMs": 2500, "maxRssMb": 64, "metadata": {"tool": "lint", "n": 3, "ok": true}, "env": {"K": "V"}, "cwd": "/tmp"}

{"cmd": "echo $HOME | wc -c"}
)",
      Config{});
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].ToString();
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
  for (const JobError& e : jobs.error()) errors.push_back(e.ToString());
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

TEST(JobFileTest, TimeoutAboveThirtyDaysIsRejected) {
  auto jobs = ParseJobs("{\"cmd\": \"true\", \"timeoutMs\": 99999999999999}", Config{});
  ASSERT_FALSE(jobs.ok());
  EXPECT_THAT(jobs.error()[0].ToString(), HasSubstr("must be at most 2592000000"));
}

TEST(JobFileTest, EmptyOrMissingFileIsAnError) {
  auto empty = ParseJobs("\n\n", Config{});
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.error()[0].ToString(), HasSubstr("no jobs"));
  auto missing = LoadJobFile("/laneguard/no/such/jobs.jsonl", Config{});
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error()[0].ToString(), HasSubstr("/laneguard/no/such/jobs.jsonl"));
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
  ASSERT_TRUE(jobs.ok()) << jobs.error()[0].ToString();
  std::set<std::string> lanes;
  for (const Job& job : *jobs) lanes.insert(job.lane);
  EXPECT_EQ(lanes.size(), 5u);
}

}  // namespace
}  // namespace laneguard::cli
