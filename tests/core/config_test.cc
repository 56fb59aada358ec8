#include "laneguard/config.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <thread>

#include "base/json_input.h"
#include "support/limit_growth.h"

namespace laneguard {
namespace {

using Lanes = std::map<std::string, int, std::less<>>;

const Lanes kDefaultLanes = {
    {"tool_call", 8}, {"file_read", 16}, {"file_write", 4}, {"critic", 3}, {"forecast_model", 1}};

std::string ExamplePath(const std::string& name) {
  return std::string(LANEGUARD_SOURCE_DIR) + "/examples/config/" + name;
}

// A scratch file that is removed when the test ends.
class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    char tmpl[] = "/tmp/laneguard_config_test_XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    close(fd);
    path_ = tmpl;
    std::ofstream(path_) << contents;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(Config, DefaultsEqualTheSpec) {
  Config c;
  EXPECT_EQ(c.max_rss_mb, 512);
  EXPECT_EQ(c.heap_warning_mb, 400);
  EXPECT_EQ(c.lane_concurrency_limits, kDefaultLanes);
  EXPECT_EQ(c.global_concurrency_limit, 32);
  EXPECT_EQ(c.default_timeout_ms, 300000);
  EXPECT_EQ(c.timeout_escalation_factor, 1.5);
  EXPECT_TRUE(c.enable_memory_guards);
  EXPECT_TRUE(c.enable_span_emission);
  EXPECT_EQ(c.span_sample_rate, 1.0);
  EXPECT_TRUE(ValidateConfig(c).ok());
}

TEST(Config, EmptyObjectParsesToDefaults) {
  auto r = ParseConfigJson("{}");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(*r, Config{});
}

TEST(Config, PartialJsonMergesOverDefaults) {
  auto r = ParseConfigJson(R"({"maxRssMb": 1024, "enableSpanEmission": false,
                               "spanSampleRate": 0.25, "defaultTimeoutMs": 1000})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  Config expected;
  expected.max_rss_mb = 1024;
  expected.enable_span_emission = false;
  expected.span_sample_rate = 0.25;
  expected.default_timeout_ms = 1000;
  EXPECT_EQ(*r, expected);
  // Untouched fields keep their defaults.
  EXPECT_EQ(r->heap_warning_mb, 400);
  EXPECT_EQ(r->global_concurrency_limit, 32);
  EXPECT_EQ(r->lane_concurrency_limits, kDefaultLanes);
}

TEST(Config, PartialJsonMergesOverGivenBase) {
  Config base;
  base.max_rss_mb = 2048;
  base.timeout_escalation_factor = 3;
  auto r = ParseConfigJson(R"({"heapWarningMb": 100})", base);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->max_rss_mb, 2048);
  EXPECT_EQ(r->timeout_escalation_factor, 3);
  EXPECT_EQ(r->heap_warning_mb, 100);
}

TEST(Config, CustomLaneIsAddedAndDefaultLanesStay) {
  auto r = ParseConfigJson(R"({"laneConcurrencyLimits": {"custom_lane": 5}})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  Lanes expected = kDefaultLanes;
  expected["custom_lane"] = 5;
  EXPECT_EQ(r->lane_concurrency_limits, expected);
}

TEST(Config, LaneOverrideChangesOnlyThatLane) {
  auto r = ParseConfigJson(R"({"laneConcurrencyLimits": {"file_write": 2, "critic": 32}})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  Lanes expected = kDefaultLanes;
  expected["file_write"] = 2;
  expected["critic"] = 32;  // equal to the global limit is allowed
  EXPECT_EQ(r->lane_concurrency_limits, expected);
}

TEST(Config, IntegralFloatIsAcceptedForIntegerField) {
  auto r = ParseConfigJson(R"({"globalConcurrencyLimit": 40.0, "defaultTimeoutMs": 5e3})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->global_concurrency_limit, 40);
  EXPECT_EQ(r->default_timeout_ms, 5000);
}

TEST(Config, ExtensionKeysParse) {
  auto r =
      ParseConfigJson(R"({"metricsCapacity": 7, "memorySampleIntervalMs": 250, "timerTickMs": 3})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->metrics_capacity, 7);
  EXPECT_EQ(r->memory_sample_interval_ms, 250);
  EXPECT_EQ(r->timer_tick_ms, 3);
}

TEST(Config, WaitingAdmissionDefaults) {
  Config c;
  EXPECT_EQ(c.default_queue_limit, 1000);
  EXPECT_TRUE(c.lane_queue_limits.empty());
  EXPECT_EQ(c.queue_aging_ms, 1000);
  EXPECT_EQ(c.task_concurrency_limit, 0);
  EXPECT_TRUE(c.lane_task_concurrency_limits.empty());
  EXPECT_EQ(c.task_quota_action, TaskQuotaAction::kRefuse);
  EXPECT_TRUE(c.lane_lendable_percent.empty());
  EXPECT_TRUE(c.lane_borrowing_limit_percent.empty());
}

TEST(Config, WaitingAdmissionKeysParse) {
  auto r = ParseConfigJson(R"({"defaultQueueLimit": 0, "laneQueueLimits": {"critic": 7},
      "queueAgingMs": 250, "taskConcurrencyLimit": 4,
      "laneTaskConcurrencyLimits": {"tool_call": 2}, "taskQuotaAction": "queue",
      "laneLendablePercent": {"file_read": 100, "critic": 0},
      "laneBorrowingLimitPercent": {"tool_call": 1000}})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->default_queue_limit, 0);
  EXPECT_EQ(r->lane_queue_limits, (Lanes{{"critic", 7}}));
  EXPECT_EQ(r->queue_aging_ms, 250);
  EXPECT_EQ(r->task_concurrency_limit, 4);
  EXPECT_EQ(r->lane_task_concurrency_limits, (Lanes{{"tool_call", 2}}));
  EXPECT_EQ(r->task_quota_action, TaskQuotaAction::kQueue);
  EXPECT_EQ(r->lane_lendable_percent, (Lanes{{"critic", 0}, {"file_read", 100}}));
  EXPECT_EQ(r->lane_borrowing_limit_percent, (Lanes{{"tool_call", 1000}}));
  // Untouched fields keep their defaults.
  EXPECT_EQ(r->lane_concurrency_limits, kDefaultLanes);
  auto refuse = ParseConfigJson(R"({"taskQuotaAction": "refuse"})");
  ASSERT_TRUE(refuse.ok()) << refuse.error().message();
  EXPECT_EQ(refuse->task_quota_action, TaskQuotaAction::kRefuse);
}

TEST(Config, TaskQuotaActionToString) {
  EXPECT_EQ(ToString(TaskQuotaAction::kRefuse), "refuse");
  EXPECT_EQ(ToString(TaskQuotaAction::kQueue), "queue");
}

// --- Error cases: every error names the key and the value, in its fields and its message. ---

struct ErrorCase {
  std::string name;
  std::string json;
  std::string key;    // expected Error::field()
  std::string value;  // expected Error::value() (JSON text)
};

void PrintTo(const ErrorCase& tc, std::ostream* os) { *os << tc.json; }

// Values reported by the final validation are re-serialized from the C++ field, so an integral
// double comes back as "2.0" where the document said 2; compare as JSON values.
bool SameJsonValue(const std::string& a, const std::string& b) {
  auto ja = nlohmann::json::parse(a, nullptr, false);
  auto jb = nlohmann::json::parse(b, nullptr, false);
  if (ja.is_discarded() || jb.is_discarded()) return false;
  if (ja.is_number() && jb.is_number()) {
    // nlohmann's == casts unsigned to signed (18446744073709551615 == -1): compare integers by
    // text.
    if (ja.is_number_float() || jb.is_number_float()) return ja.get<double>() == jb.get<double>();
    return ja.dump() == jb.dump();
  }
  return ja == jb;
}

class ConfigErrorTest : public testing::TestWithParam<ErrorCase> {};

TEST_P(ConfigErrorTest, NamesKeyAndValue) {
  const ErrorCase& tc = GetParam();
  auto r = ParseConfigJson(tc.json);
  ASSERT_FALSE(r.ok()) << "accepted: " << tc.json;
  const Error& e = r.error();
  EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(e.field(), tc.key);
  EXPECT_TRUE(SameJsonValue(e.value(), tc.value)) << e.value() << " vs " << tc.value;
  EXPECT_NE(e.message().find("'" + tc.key + "'"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find(e.value()), std::string::npos) << e.message();
}

INSTANTIATE_TEST_SUITE_P(
    Config, ConfigErrorTest,
    testing::Values(
        ErrorCase{"UnknownKey", R"({"maxRssMB": 100})", "maxRssMB", "100"},
        ErrorCase{"UnknownTypeScriptOnlyKey", R"({"throwOnResourceLimitExceeded": true})",
                  "throwOnResourceLimitExceeded", "true"},
        ErrorCase{"StringForNumber", R"({"maxRssMb": "512"})", "maxRssMb", R"("512")"},
        ErrorCase{"StringForInteger", R"({"globalConcurrencyLimit": "8"})",
                  "globalConcurrencyLimit", R"("8")"},
        ErrorCase{"BoolForNumber", R"({"heapWarningMb": true})", "heapWarningMb", "true"},
        ErrorCase{"NumberForBool", R"({"enableMemoryGuards": 1})", "enableMemoryGuards", "1"},
        ErrorCase{"StringForBool", R"({"enableSpanEmission": "yes"})", "enableSpanEmission",
                  R"("yes")"},
        ErrorCase{"ArrayForLanes", R"({"laneConcurrencyLimits": [1,2]})", "laneConcurrencyLimits",
                  "[1,2]"},
        ErrorCase{"FractionForGlobalLimit", R"({"globalConcurrencyLimit": 1.5})",
                  "globalConcurrencyLimit", "1.5"},
        ErrorCase{"FractionForTimeout", R"({"defaultTimeoutMs": 1.5})", "defaultTimeoutMs", "1.5"},
        ErrorCase{"FractionForLaneLimit", R"({"laneConcurrencyLimits": {"critic": 1.5}})",
                  "laneConcurrencyLimits.critic", "1.5"},
        ErrorCase{"StringForLaneLimit", R"({"laneConcurrencyLimits": {"critic": "3"}})",
                  "laneConcurrencyLimits.critic", R"("3")"},
        ErrorCase{"LaneLimitZero", R"({"laneConcurrencyLimits": {"file_write": 0}})",
                  "laneConcurrencyLimits.file_write", "0"},
        ErrorCase{"LaneLimitNegative", R"({"laneConcurrencyLimits": {"file_write": -1}})",
                  "laneConcurrencyLimits.file_write", "-1"},
        ErrorCase{"ExplicitLaneAboveGlobal", R"({"laneConcurrencyLimits": {"tool_call": 33}})",
                  "laneConcurrencyLimits.tool_call", "33"},
        ErrorCase{"ExplicitLaneAboveLoweredGlobal",
                  R"({"globalConcurrencyLimit": 8, "laneConcurrencyLimits": {"file_read": 16}})",
                  "laneConcurrencyLimits.file_read", "16"},
        ErrorCase{"GlobalLimitZero", R"({"globalConcurrencyLimit": 0})", "globalConcurrencyLimit",
                  "0"},
        ErrorCase{"SampleRateNegative", R"({"spanSampleRate": -0.1})", "spanSampleRate", "-0.1"},
        ErrorCase{"SampleRateAboveOne", R"({"spanSampleRate": 1.5})", "spanSampleRate", "1.5"},
        ErrorCase{"EscalationBelowOne", R"({"timeoutEscalationFactor": 0.9})",
                  "timeoutEscalationFactor", "0.9"},
        ErrorCase{"TimeoutZero", R"({"defaultTimeoutMs": 0})", "defaultTimeoutMs", "0"},
        ErrorCase{"TimeoutNegative", R"({"defaultTimeoutMs": -5})", "defaultTimeoutMs", "-5"},
        ErrorCase{"TimeoutAboveThirtyDays", R"({"defaultTimeoutMs": 2592000001})",
                  "defaultTimeoutMs", "2592000001"},
        ErrorCase{"EscalationAboveHundred", R"({"timeoutEscalationFactor": 1e300})",
                  "timeoutEscalationFactor", "1e300"},
        ErrorCase{"UnsignedAboveInt64ForTimeout", R"({"defaultTimeoutMs": 18446744073709551615})",
                  "defaultTimeoutMs", "18446744073709551615"},
        ErrorCase{"HugeIntegralFloatForGlobalLimit", R"({"globalConcurrencyLimit": 1e20})",
                  "globalConcurrencyLimit", "1e20"},
        ErrorCase{"UnsignedAboveInt64ForLaneLimit",
                  R"({"laneConcurrencyLimits": {"critic": 9223372036854775808}})",
                  "laneConcurrencyLimits.critic", "9223372036854775808"},
        ErrorCase{"MaxRssZero", R"({"maxRssMb": 0})", "maxRssMb", "0"},
        ErrorCase{"TimerTickZero", R"({"timerTickMs": 0})", "timerTickMs", "0"},
        // Waiting admission.
        ErrorCase{"StringForDefaultQueueLimit", R"({"defaultQueueLimit": "5"})",
                  "defaultQueueLimit", R"("5")"},
        ErrorCase{"FractionForDefaultQueueLimit", R"({"defaultQueueLimit": 2.5})",
                  "defaultQueueLimit", "2.5"},
        ErrorCase{"DefaultQueueLimitNegative", R"({"defaultQueueLimit": -1})", "defaultQueueLimit",
                  "-1"},
        ErrorCase{"DefaultQueueLimitAboveBound", R"({"defaultQueueLimit": 1000001})",
                  "defaultQueueLimit", "1000001"},
        ErrorCase{"DefaultQueueLimitHuge", R"({"defaultQueueLimit": 1e20})", "defaultQueueLimit",
                  "1e20"},
        ErrorCase{"ArrayForLaneQueueLimits", R"({"laneQueueLimits": [1]})", "laneQueueLimits",
                  "[1]"},
        ErrorCase{"NumberForLaneQueueLimits", R"({"laneQueueLimits": 5})", "laneQueueLimits", "5"},
        ErrorCase{"StringForLaneQueueLimit", R"({"laneQueueLimits": {"critic": "3"}})",
                  "laneQueueLimits.critic", R"("3")"},
        ErrorCase{"FractionForLaneQueueLimit", R"({"laneQueueLimits": {"critic": 0.5}})",
                  "laneQueueLimits.critic", "0.5"},
        ErrorCase{"LaneQueueLimitNegative", R"({"laneQueueLimits": {"critic": -1}})",
                  "laneQueueLimits.critic", "-1"},
        ErrorCase{"LaneQueueLimitAboveBound", R"({"laneQueueLimits": {"critic": 1000001}})",
                  "laneQueueLimits.critic", "1000001"},
        ErrorCase{"LaneQueueLimitUnknownLane", R"({"laneQueueLimits": {"nosuch": 3}})",
                  "laneQueueLimits.nosuch", "3"},
        ErrorCase{"StringForQueueAging", R"({"queueAgingMs": "1000"})", "queueAgingMs",
                  R"("1000")"},
        ErrorCase{"FractionForQueueAging", R"({"queueAgingMs": 1.5})", "queueAgingMs", "1.5"},
        ErrorCase{"QueueAgingZero", R"({"queueAgingMs": 0})", "queueAgingMs", "0"},
        ErrorCase{"QueueAgingNegative", R"({"queueAgingMs": -1})", "queueAgingMs", "-1"},
        ErrorCase{"QueueAgingAboveBound", R"({"queueAgingMs": 2592000001})", "queueAgingMs",
                  "2592000001"},
        ErrorCase{"BoolForTaskConcurrencyLimit", R"({"taskConcurrencyLimit": true})",
                  "taskConcurrencyLimit", "true"},
        ErrorCase{"TaskConcurrencyLimitNegative", R"({"taskConcurrencyLimit": -1})",
                  "taskConcurrencyLimit", "-1"},
        ErrorCase{"TaskConcurrencyLimitAboveBound", R"({"taskConcurrencyLimit": 1000001})",
                  "taskConcurrencyLimit", "1000001"},
        ErrorCase{"ArrayForLaneTaskLimits", R"({"laneTaskConcurrencyLimits": [2]})",
                  "laneTaskConcurrencyLimits", "[2]"},
        ErrorCase{"LaneTaskLimitZero", R"({"laneTaskConcurrencyLimits": {"critic": 0}})",
                  "laneTaskConcurrencyLimits.critic", "0"},
        ErrorCase{"LaneTaskLimitAboveBound",
                  R"({"laneTaskConcurrencyLimits": {"critic": 1000001}})",
                  "laneTaskConcurrencyLimits.critic", "1000001"},
        ErrorCase{"LaneTaskLimitUnknownLane", R"({"laneTaskConcurrencyLimits": {"nosuch": 1}})",
                  "laneTaskConcurrencyLimits.nosuch", "1"},
        ErrorCase{"NumberForTaskQuotaAction", R"({"taskQuotaAction": 1})", "taskQuotaAction", "1"},
        ErrorCase{"UnknownTaskQuotaAction", R"({"taskQuotaAction": "drop"})", "taskQuotaAction",
                  R"("drop")"},
        ErrorCase{"TaskQuotaActionIsCaseSensitive", R"({"taskQuotaAction": "Queue"})",
                  "taskQuotaAction", R"("Queue")"},
        ErrorCase{"StringForLendablePercentMap", R"({"laneLendablePercent": "50"})",
                  "laneLendablePercent", R"("50")"},
        ErrorCase{"LendablePercentNegative", R"({"laneLendablePercent": {"critic": -1}})",
                  "laneLendablePercent.critic", "-1"},
        ErrorCase{"LendablePercentAboveHundred", R"({"laneLendablePercent": {"critic": 101}})",
                  "laneLendablePercent.critic", "101"},
        ErrorCase{"FractionForLendablePercent", R"({"laneLendablePercent": {"critic": 50.5}})",
                  "laneLendablePercent.critic", "50.5"},
        ErrorCase{"LendablePercentUnknownLane", R"({"laneLendablePercent": {"nosuch": 50}})",
                  "laneLendablePercent.nosuch", "50"},
        ErrorCase{"ArrayForBorrowingLimitPercent", R"({"laneBorrowingLimitPercent": []})",
                  "laneBorrowingLimitPercent", "[]"},
        ErrorCase{"BorrowingLimitPercentNegative",
                  R"({"laneBorrowingLimitPercent": {"critic": -1}})",
                  "laneBorrowingLimitPercent.critic", "-1"},
        ErrorCase{"BorrowingLimitPercentAboveBound",
                  R"({"laneBorrowingLimitPercent": {"critic": 1001}})",
                  "laneBorrowingLimitPercent.critic", "1001"},
        ErrorCase{"BorrowingLimitPercentUnknownLane",
                  R"({"laneBorrowingLimitPercent": {"nosuch": 10}})",
                  "laneBorrowingLimitPercent.nosuch", "10"},
        ErrorCase{"MisspelledWaitingKey", R"({"queueAgingMS": 5})", "queueAgingMS", "5"}),
    [](const testing::TestParamInfo<ErrorCase>& info) { return info.param.name; });

TEST(Config, MalformedJsonIsAnErrorWithParserPosition) {
  auto r = ParseConfigJson(R"({"maxRssMb": 512,)");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "");
  EXPECT_EQ(r.error().value(), "");
  EXPECT_NE(r.error().message().find("not valid JSON"), std::string::npos) << r.error().message();
  // nlohmann's parse_error names the position ("... at line 1, column 18 ...").
  EXPECT_NE(r.error().message().find("column"), std::string::npos) << r.error().message();
}

TEST(Config, NumberOverflowIsAnErrorNotAnException) {
  // nlohmann reports 1e400 as out_of_range, not parse_error; it must not escape as an exception.
  Result<Config> r = Config{};
  ASSERT_NO_THROW(r = ParseConfigJson(R"({"maxRssMb": 1e400})"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("1e400"), std::string::npos) << r.error().message();
}

TEST(Config, EmptyInputIsMalformed) {
  auto r = ParseConfigJson("");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "");
  EXPECT_NE(r.error().message().find("not valid JSON"), std::string::npos) << r.error().message();
}

TEST(Config, NonObjectJsonIsAnErrorNamingTheValue) {
  for (const std::string text : {"[1,2]", "42", "\"maxRssMb\"", "null"}) {
    auto r = ParseConfigJson(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.error().field(), "") << text;
    EXPECT_EQ(r.error().value(), text);
    EXPECT_NE(r.error().message().find("object"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find(text), std::string::npos) << r.error().message();
  }
}

TEST(Config, LaneAboveGlobalMessageNamesTheGlobalLimit) {
  auto r = ParseConfigJson(R"({"globalConcurrencyLimit": 10, "laneConcurrencyLimits": {"x": 11}})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "laneConcurrencyLimits.x");
  EXPECT_NE(r.error().message().find("10"), std::string::npos) << r.error().message();
}

// --- Clamping of inherited lane limits (config.h). ---

TEST(Config, InheritedLaneLimitsAreClampedToLoweredGlobalLimit) {
  auto r = ParseConfigJson(R"({"globalConcurrencyLimit": 6})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->global_concurrency_limit, 6);
  Lanes expected = {
      {"tool_call", 6}, {"file_read", 6}, {"file_write", 4}, {"critic", 3}, {"forecast_model", 1}};
  EXPECT_EQ(r->lane_concurrency_limits, expected);
}

TEST(Config, ClampingAppliesOnlyToInheritedLanes) {
  // file_write is explicit and within the limit; file_read is inherited and clamped.
  auto r = ParseConfigJson(
      R"({"globalConcurrencyLimit": 5, "laneConcurrencyLimits": {"file_write": 5}})");
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->lane_concurrency_limits.at("file_write"), 5);
  EXPECT_EQ(r->lane_concurrency_limits.at("file_read"), 5);
  EXPECT_EQ(r->lane_concurrency_limits.at("tool_call"), 5);
  EXPECT_EQ(r->lane_concurrency_limits.at("critic"), 3);
}

TEST(Config, InheritedCustomLaneFromBaseIsClamped) {
  Config base;
  base.global_concurrency_limit = 100;
  base.lane_concurrency_limits["bulk"] = 90;
  auto r = ParseConfigJson(R"({"globalConcurrencyLimit": 20})", base);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->lane_concurrency_limits.at("bulk"), 20);
  EXPECT_EQ(r->lane_concurrency_limits.at("file_read"), 16);
}

TEST(Config, ValidateConfigRejectsLaneAboveGlobal) {
  Config c;
  c.lane_concurrency_limits["tool_call"] = 33;
  auto r = ValidateConfig(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "laneConcurrencyLimits.tool_call");
  EXPECT_EQ(r.error().value(), "33");
  EXPECT_NE(r.error().message().find("laneConcurrencyLimits.tool_call"), std::string::npos);
  EXPECT_NE(r.error().message().find("33"), std::string::npos);
}

TEST(Config, ValidateConfigRejectsOtherImpossibleValues) {
  {
    Config c;
    c.lane_concurrency_limits.clear();
    auto r = ValidateConfig(c);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().field(), "laneConcurrencyLimits");
  }
  {
    Config c;
    c.lane_concurrency_limits[""] = 1;
    auto r = ValidateConfig(c);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().field(), "laneConcurrencyLimits.");
  }
  {
    Config c;
    c.metrics_capacity = 0;
    auto r = ValidateConfig(c);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().field(), "metricsCapacity");
    EXPECT_EQ(r.error().value(), "0");
  }
  {
    Config c;
    c.heap_warning_mb = -1;
    auto r = ValidateConfig(c);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().field(), "heapWarningMb");
  }
}

// --- Serialization. ---

TEST(Config, ConfigToJsonRoundTrips) {
  Config c;
  c.max_rss_mb = 1234.5;
  c.heap_warning_mb = 0.1 + 0.2;  // not exactly representable: needs full precision
  c.lane_concurrency_limits["custom_lane"] = 5;
  c.lane_concurrency_limits["tool_call"] = 12;
  c.global_concurrency_limit = 48;
  c.default_timeout_ms = 1234567890;
  c.timeout_escalation_factor = 2.75;
  c.enable_memory_guards = false;
  c.enable_span_emission = false;
  c.span_sample_rate = 1.0 / 3.0;
  c.metrics_capacity = 17;
  c.memory_sample_interval_ms = 333;
  c.timer_tick_ms = 7;
  c.default_queue_limit = 0;
  c.lane_queue_limits = {{"custom_lane", 3}, {"critic", 0}};
  c.queue_aging_ms = 4321;
  c.task_concurrency_limit = 6;
  c.lane_task_concurrency_limits = {{"tool_call", 2}};
  c.task_quota_action = TaskQuotaAction::kQueue;
  c.lane_lendable_percent = {{"file_read", 40}, {"custom_lane", 100}};
  c.lane_borrowing_limit_percent = {{"tool_call", 250}, {"critic", 0}};
  ASSERT_TRUE(ValidateConfig(c).ok());
  const std::string text = ConfigToJson(c);
  auto r = ParseConfigJson(text);
  ASSERT_TRUE(r.ok()) << r.error().message() << "\n" << text;
  EXPECT_EQ(*r, c) << text;
  // Compact form too.
  auto compact = ParseConfigJson(ConfigToJson(c, -1));
  ASSERT_TRUE(compact.ok());
  EXPECT_EQ(*compact, c);
}

TEST(Config, ConfigToJsonHasEveryFieldInCamelCase) {
  const std::string text = ConfigToJson(Config{}, -1);
  for (const char* key : {"\"maxRssMb\"",
                          "\"heapWarningMb\"",
                          "\"laneConcurrencyLimits\"",
                          "\"globalConcurrencyLimit\"",
                          "\"defaultTimeoutMs\"",
                          "\"timeoutEscalationFactor\"",
                          "\"enableMemoryGuards\"",
                          "\"enableSpanEmission\"",
                          "\"spanSampleRate\"",
                          "\"metricsCapacity\"",
                          "\"memorySampleIntervalMs\"",
                          "\"timerTickMs\"",
                          "\"file_read\"",
                          "\"defaultQueueLimit\"",
                          "\"laneQueueLimits\"",
                          "\"queueAgingMs\"",
                          "\"taskConcurrencyLimit\"",
                          "\"laneTaskConcurrencyLimits\"",
                          "\"taskQuotaAction\":\"refuse\"",
                          "\"laneLendablePercent\"",
                          "\"laneBorrowingLimitPercent\""}) {
    EXPECT_NE(text.find(key), std::string::npos) << key << " missing from " << text;
  }
}

TEST(Config, RoundTripOfConfigWithoutDefaultLanesNeedsLaneFreeBase) {
  // Lanes merge lane by lane, so a config that dropped default lanes gets them back when its JSON
  // is parsed over the defaults; parsed over a base without lanes it round-trips exactly.
  Config c;
  c.lane_concurrency_limits = {{"only", 2}};
  const std::string text = ConfigToJson(c);
  auto over_defaults = ParseConfigJson(text);
  ASSERT_TRUE(over_defaults.ok());
  EXPECT_EQ(over_defaults->lane_concurrency_limits.size(), 6u);
  Config lane_free;
  lane_free.lane_concurrency_limits.clear();
  auto exact = ParseConfigJson(text, lane_free);
  ASSERT_TRUE(exact.ok()) << exact.error().message();
  EXPECT_EQ(*exact, c);
}

// --- Files. ---

TEST(Config, LoadConfigFileMissingPathNamesThePath) {
  const std::string path = "/nonexistent/laneguard/no-such-config.json";
  auto r = LoadConfigFile(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "");
  EXPECT_NE(r.error().message().find(path), std::string::npos) << r.error().message();
}

TEST(Config, LoadConfigFileErrorNamesPathKeyAndValue) {
  TempFile f(R"({"spanSampleRate": 2})");
  auto r = LoadConfigFile(f.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "spanSampleRate");
  EXPECT_TRUE(SameJsonValue(r.error().value(), "2")) << r.error().value();
  EXPECT_NE(r.error().message().find(f.path()), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("spanSampleRate"), std::string::npos) << r.error().message();
}

TEST(Config, LoadConfigFileMergesOverBase) {
  TempFile f(R"({"maxRssMb": 64})");
  Config base;
  base.global_concurrency_limit = 4;
  base.lane_concurrency_limits = {{"a", 4}};
  auto r = LoadConfigFile(f.path(), base);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->max_rss_mb, 64);
  EXPECT_EQ(r->global_concurrency_limit, 4);
  EXPECT_EQ(r->lane_concurrency_limits, (Lanes{{"a", 4}}));
}

TEST(Config, DevelopmentExampleLoads) {
  auto r = LoadConfigFile(ExamplePath("development.json"));
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->max_rss_mb, 256);
  EXPECT_EQ(r->global_concurrency_limit, 8);
  EXPECT_TRUE(r->enable_memory_guards);
  EXPECT_FALSE(r->enable_span_emission);
  EXPECT_EQ(r->span_sample_rate, 0.1);
  // Unstated fields keep their defaults; file_read (16) is clamped to the global limit of 8.
  EXPECT_EQ(r->heap_warning_mb, 400);
  EXPECT_EQ(r->default_timeout_ms, 300000);
  EXPECT_EQ(r->timeout_escalation_factor, 1.5);
  Lanes expected = {
      {"tool_call", 8}, {"file_read", 8}, {"file_write", 4}, {"critic", 3}, {"forecast_model", 1}};
  EXPECT_EQ(r->lane_concurrency_limits, expected);
}

TEST(Config, StagingExampleLoads) {
  auto r = LoadConfigFile(ExamplePath("staging.json"));
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->max_rss_mb, 512);
  EXPECT_EQ(r->global_concurrency_limit, 32);
  EXPECT_TRUE(r->enable_memory_guards);
  EXPECT_TRUE(r->enable_span_emission);
  EXPECT_EQ(r->span_sample_rate, 0.5);
  EXPECT_EQ(r->lane_concurrency_limits, kDefaultLanes);
  EXPECT_EQ(r->default_timeout_ms, 300000);
}

TEST(Config, ProductionExampleLoads) {
  auto r = LoadConfigFile(ExamplePath("production.json"));
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->max_rss_mb, 1024);
  EXPECT_EQ(r->global_concurrency_limit, 64);
  Lanes expected = {{"tool_call", 16},
                    {"file_read", 32},
                    {"file_write", 8},
                    {"critic", 6},
                    {"forecast_model", 1}};
  EXPECT_EQ(r->lane_concurrency_limits, expected);
  EXPECT_EQ(r->default_timeout_ms, 600000);
  EXPECT_TRUE(r->enable_memory_guards);
  EXPECT_TRUE(r->enable_span_emission);
  EXPECT_EQ(r->span_sample_rate, 1.0);
  EXPECT_EQ(r->heap_warning_mb, 400);
  EXPECT_EQ(r->timeout_escalation_factor, 1.5);
}

}  // namespace
}  // namespace laneguard

namespace laneguard {
namespace {

TEST(Config, ValidateConfigBoundsTheGlobalLimit) {
  Config c;
  c.global_concurrency_limit = kMaxConcurrencyLimit + 1;
  auto r = ValidateConfig(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "globalConcurrencyLimit");
  EXPECT_EQ(r.error().value(), std::to_string(kMaxConcurrencyLimit + 1));
  c.global_concurrency_limit = kMaxConcurrencyLimit;
  EXPECT_TRUE(ValidateConfig(c).ok());
}

}  // namespace
}  // namespace laneguard

// --- Untrusted input: deep, huge and surprising documents (issue 16). ---

namespace laneguard {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// `depth` nested objects {"a":{"a":...1...}}.
std::string DeepObject(const std::string& key, int depth) {
  std::string text;
  for (int i = 0; i < depth; ++i) text += "{\"" + key + "\":";
  text += "1";
  text.append(static_cast<size_t>(depth), '}');
  return text;
}

std::string DeepArray(int depth) {
  return std::string(static_cast<size_t>(depth), '[') + "1" +
         std::string(static_cast<size_t>(depth), ']');
}

// Messages show a bounded preview of any value; this is generous for "about 80 characters" plus
// the key and the reason.
constexpr size_t kMaxMessage = 400;

// The crash was the recursive dump() building the message, 100,000 levels down.
TEST(ConfigInput, DeeplyNestedValuesAreErrorsNotCrashes) {
  const int depth = 100'000;
  for (const std::string& text :
       {DeepObject("a", depth), "{\"maxRssMb\":" + DeepArray(depth) + "}",
        "{\"laneConcurrencyLimits\":{\"x\":" + DeepArray(depth) + "}}", DeepArray(depth)}) {
    auto r = ParseConfigJson(text);
    ASSERT_FALSE(r.ok());
    EXPECT_LE(r.error().message().size(), kMaxMessage) << r.error().message().substr(0, 1000);
    EXPECT_LE(r.error().value().size(), kMaxMessage);
  }
  auto r = ParseConfigJson(DeepObject("a", depth));
  EXPECT_EQ(r.error().field(), "a");
  EXPECT_THAT(r.error().message(), HasSubstr("{\"a\":{…}}"));
}

TEST(ConfigInput, HugeValuesAreShownAsAShortPrefix) {
  const std::string huge(10 << 20, 'x');
  for (const std::string& text :
       {"{\"unknownKey\":\"" + huge + "\"}", "{\"maxRssMb\":\"" + huge + "\"}",
        "{\"maxRssMb\":[\"" + huge + "\",2]}", "{\"" + huge + "\":1}",
        "{\"laneConcurrencyLimits\":{\"" + huge + "\":0}}", "[\"" + huge + "\"]"}) {
    auto r = ParseConfigJson(text);
    ASSERT_FALSE(r.ok());
    EXPECT_LE(r.error().message().size(), kMaxMessage) << r.error().message().substr(0, 1000);
    EXPECT_LE(r.error().field().size(), kMaxMessage);
    EXPECT_THAT(r.error().message(), HasSubstr("xxxxxxxxxx"));  // a prefix is shown
    EXPECT_THAT(r.error().message(), HasSubstr("…"));
  }
}

// A cut never splits a UTF-8 character: the message stays valid UTF-8 (JSON loggers and
// terminals downstream reject or garble the rest).
TEST(ConfigInput, ShortenedValuesStayValidUtf8) {
  std::string wide;
  for (int i = 0; i < 100'000; ++i) wide += "é€😀";
  for (const std::string& text : {"{\"maxRssMb\": \"" + wide + "\"}", "{\"" + wide + "\": 1}"}) {
    auto r = ParseConfigJson(text);
    ASSERT_FALSE(r.ok());
    EXPECT_LE(r.error().message().size(), kMaxMessage);
    const nlohmann::json as_string = r.error().message();
    EXPECT_NO_THROW(as_string.dump()) << "not valid UTF-8: " << r.error().message();
  }
}

TEST(ConfigInput, ContainersArePreviewedOneLevelDeep) {
  auto r = ParseConfigJson(R"({"maxRssMb": {"a": [1, 2], "b": "c"}})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().value(), R"({"a":[…],"b":"c"})");
  r = ParseConfigJson(R"({"maxRssMb": [1, "two", null, true]})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().value(), R"([1,"two",null,true])");
}

// An unterminated 1 MB string: nlohmann's "last read" token is the whole string.
TEST(ConfigInput, ParseErrorsAreBoundedAndKeepThePosition) {
  auto r = ParseConfigJson("{\"maxRssMb\": \"" + std::string(1 << 20, 'y'));
  ASSERT_FALSE(r.ok());
  EXPECT_LE(r.error().message().size(), kMaxMessage) << r.error().message().substr(0, 1000);
  EXPECT_THAT(r.error().message(), HasSubstr("column"));
  EXPECT_THAT(r.error().message(), HasSubstr("not valid JSON"));
}

// Each pair: a key and the value the issue found passing `config check` and then failing `run`
// (timeouts that never fire, bad_alloc), and its bound.
TEST(ConfigInput, EveryNumericKeyHasAnUpperBound) {
  struct Bound {
    std::string key;
    std::string too_big;  // from the issue where there was one
    double max;
  };
  for (const Bound& b : std::vector<Bound>{
           {"timerTickMs", "100000000", static_cast<double>(kMaxTimerTickMs)},
           {"metricsCapacity", "100000000", static_cast<double>(kMaxMetricsCapacity)},
           {"memorySampleIntervalMs", "1e13", static_cast<double>(kMaxMemorySampleIntervalMs)},
           {"maxRssMb", "1e300", static_cast<double>(kMaxMemoryMb)},
           {"heapWarningMb", "1e300", static_cast<double>(kMaxMemoryMb)},
           {"defaultTimeoutMs", "1e13", static_cast<double>(kMaxTimeoutMs)},
           {"globalConcurrencyLimit", "2000000", kMaxConcurrencyLimit},
           {"timeoutEscalationFactor", "1e9", kMaxEscalationFactor},
           {"defaultQueueLimit", "1e9", kMaxQueueLimit},
           {"queueAgingMs", "1e13", static_cast<double>(kMaxTimeoutMs)},
           {"taskConcurrencyLimit", "1e9", kMaxConcurrencyLimit},
       }) {
    auto r = ParseConfigJson("{\"" + b.key + "\": " + b.too_big + "}");
    ASSERT_FALSE(r.ok()) << b.key;
    EXPECT_EQ(r.error().field(), b.key);
    const nlohmann::json max = b.max;  // the bound itself is accepted, one more is not
    nlohmann::json doc = {{b.key, max}};
    auto at_bound = ParseConfigJson(doc.dump());
    EXPECT_TRUE(at_bound.ok()) << b.key << ": " << at_bound.error().message();
    doc[b.key] = b.max + 1;
    EXPECT_FALSE(ParseConfigJson(doc.dump()).ok()) << b.key;
  }
}

TEST(ConfigInput, ValidateConfigEnforcesTheUpperBounds) {
  Config c;
  c.timer_tick_ms = kMaxTimerTickMs + 1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "timerTickMs");
  c = Config{};
  c.metrics_capacity = kMaxMetricsCapacity + 1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "metricsCapacity");
  c = Config{};
  c.memory_sample_interval_ms = kMaxMemorySampleIntervalMs + 1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "memorySampleIntervalMs");
  c = Config{};
  c.max_rss_mb = static_cast<double>(kMaxMemoryMb) * 2;
  EXPECT_EQ(ValidateConfig(c).error().field(), "maxRssMb");
  c = Config{};
  c.heap_warning_mb = static_cast<double>(kMaxMemoryMb) * 2;
  EXPECT_EQ(ValidateConfig(c).error().field(), "heapWarningMb");
}

TEST(ConfigInput, LaneLimitAboveTheBoundSaysSo) {
  auto r = ParseConfigJson(R"({"laneConcurrencyLimits": {"critic": 2000000}})");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), Not(HasSubstr(">= 1")));
  EXPECT_THAT(r.error().message(), HasSubstr(std::to_string(kMaxConcurrencyLimit)));
}

TEST(ConfigInput, DuplicateKeysAreWarnedAboutAndTheLastOneWins) {
  std::vector<std::string> warnings;
  auto r = ParseConfigJson(
      R"({"maxRssMb": 100, "maxRssMb": 200, "laneConcurrencyLimits": {"critic": 1, "critic": 2}})",
      Config{}, &warnings);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->max_rss_mb, 200);
  EXPECT_EQ(r->lane_concurrency_limits.at("critic"), 2);
  EXPECT_THAT(warnings, ::testing::UnorderedElementsAre(
                            HasSubstr("'maxRssMb'"), HasSubstr("'laneConcurrencyLimits.critic'")));
}

TEST(ConfigInput, AMisspelledLaneIsWarnedAboutWithASuggestion) {
  std::vector<std::string> warnings;
  auto r = ParseConfigJson(R"({"laneConcurrencyLimits": {"critc": 2, "custom_lane": 1}})", Config{},
                           &warnings);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_TRUE(r->lane_concurrency_limits.contains("critc"));  // a warning, not an error
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("critc"));
  EXPECT_THAT(warnings[0], HasSubstr("did you mean 'critic'?"));
}

TEST(ConfigInput, AWellFormedConfigHasNoWarnings) {
  std::vector<std::string> warnings;
  auto r = LoadConfigFile(ExamplePath("production.json"), Config{}, &warnings);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_THAT(warnings, ::testing::IsEmpty());
}

TEST(ConfigInput, UnknownKeySuggestsTheKnownOne) {
  auto r = ParseConfigJson(R"({"maxRSSMb": 100})");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("did you mean 'maxRssMb'?"));
  r = ParseConfigJson(R"({"timerTick": 5})");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("did you mean 'timerTickMs'?"));
  for (const auto& [typo, known] : std::vector<std::pair<std::string, std::string>>{
           {"queueAgingMS", "queueAgingMs"},
           {"defaultQueueLimt", "defaultQueueLimit"},
           {"laneQueueLimit", "laneQueueLimits"},
           {"taskConcurrencyLimits", "taskConcurrencyLimit"},
           {"laneTaskConcurrencyLimit", "laneTaskConcurrencyLimits"},
           {"taskQuotaActon", "taskQuotaAction"},
           {"laneLendablePercnt", "laneLendablePercent"},
           {"laneBorrowingLimitPercents", "laneBorrowingLimitPercent"}}) {
    r = ParseConfigJson("{\"" + typo + "\": 1}");
    ASSERT_FALSE(r.ok()) << typo;
    EXPECT_EQ(r.error().field(), typo);
    EXPECT_THAT(r.error().message(), HasSubstr("did you mean '" + known + "'?"));
  }
}

TEST(ConfigInput, UnreadableFilesSayWhy) {
  auto missing = LoadConfigFile("/nonexistent/laneguard/c.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.error().message(), HasSubstr(std::strerror(ENOENT)));
  auto dir = LoadConfigFile("/tmp");
  ASSERT_FALSE(dir.ok());
  EXPECT_THAT(dir.error().message(), HasSubstr("is a directory"));
  EXPECT_THAT(dir.error().message(), Not(HasSubstr("JSON")));
  auto not_dir = LoadConfigFile("/etc/passwd/c.json");
  ASSERT_FALSE(not_dir.ok());
  EXPECT_THAT(not_dir.error().message(), HasSubstr(std::strerror(ENOTDIR)));
  // The codes a program can act on: missing is not found, a directory a failed precondition.
  EXPECT_EQ(missing.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(dir.error().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(not_dir.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(missing.error().field(), "");
}

// Whether a child process can become `nobody` (root in a user namespace may not map it).
bool CanDropToNobody() {
  const pid_t pid = fork();
  if (pid == 0) _exit(setuid(65534) == 0 ? 0 : 1);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

TEST(ConfigInput, PermissionDeniedSaysSo) {
  if (geteuid() == 0 && !CanDropToNobody())
    GTEST_SKIP() << "running as root, which reads any file, and cannot become nobody";
  TempFile f("{}");
  std::filesystem::permissions(f.path(), std::filesystem::perms::none);
  // Root reads any file: the child drops to nobody first.
  EXPECT_EXIT(
      {
        if (geteuid() == 0 && setuid(65534) != 0) std::_Exit(3);
        auto r = LoadConfigFile(f.path());
        std::fprintf(stderr, "%s\n", r.ok() ? "loaded" : r.error().message().c_str());
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), std::strerror(EACCES));
}

// A pipe holding `text` (written by a thread, as it may exceed the pipe's buffer), opened through
// /dev/fd/N as `--config <(...)` would be.
class PipeWithText {
 public:
  explicit PipeWithText(std::string text) {
    EXPECT_EQ(pipe2(fds_, O_CLOEXEC), 0);
    writer_ = std::thread([this, text = std::move(text)] {
      std::string_view rest = text;
      while (!rest.empty()) {
        const ssize_t n = write(fds_[1], rest.data(), rest.size());
        if (n <= 0) break;  // the reader is gone (SIGPIPE ignored)
        rest.remove_prefix(static_cast<size_t>(n));
      }
      close(fds_[1]);
    });
  }
  ~PipeWithText() {
    close(fds_[0]);
    writer_.join();
  }
  std::string path() const { return "/dev/fd/" + std::to_string(fds_[0]); }

 private:
  int fds_[2] = {-1, -1};
  std::thread writer_;
};

// Spaces are valid JSON: the only thing wrong with this config is its size.
TEST(ConfigInput, AConfigLargerThanTheCapIsRefusedWhileReading) {
  const auto old_sigpipe = std::signal(SIGPIPE, SIG_IGN);
  {
    PipeWithText pipe(std::string(internal::kMaxConfigFileBytes - 2, ' ') + "{}");
    auto r = LoadConfigFile(pipe.path());
    EXPECT_TRUE(r.ok()) << r.error().message();  // exactly at the cap: fine
  }
  {
    PipeWithText pipe(std::string(internal::kMaxConfigFileBytes - 1, ' ') + "{}");  // 1 byte over
    auto r = LoadConfigFile(pipe.path());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().field(), "");
    EXPECT_THAT(r.error().message(), HasSubstr(pipe.path() + ": larger than 1 MiB"));
    EXPECT_THAT(r.error().message(), HasSubstr("check that this is the right file"));
  }
  std::signal(SIGPIPE, old_sigpipe);
}

// `--config <(echo '{}')`: a pipe has no size to stat, and reads like a file.
TEST(ConfigInput, ASmallPipeWorksLikeAFile) {
  PipeWithText pipe(R"({"timerTickMs": 5})");
  auto r = LoadConfigFile(pipe.path());
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->timer_tick_ms, 5);
}

using testing_support::LimitGrowth;

// `config check /dev/zero` read until memory ran out.
TEST(ConfigInput, DevZeroIsRefusedPromptly) {
  EXPECT_EXIT(
      {
        LimitGrowth(size_t{512} << 20);
        auto loaded = LoadConfigFile("/dev/zero");
        std::fprintf(stderr, "%s\n", loaded.ok() ? "loaded" : loaded.error().message().c_str());
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "/dev/zero: larger than 1 MiB, the limit for a config file");
}

}  // namespace
}  // namespace laneguard

// --- Waiting admission: queue limits, aging, per-task quotas, lane lending (issue 18). ---

namespace laneguard {
namespace {

using ::testing::HasSubstr;

// The four lane maps, by JSON key, with their bounds.
struct LaneMapCase {
  std::string key;
  std::map<std::string, int, std::less<>> Config::*field;
  int low;
  int high;
};

const std::vector<LaneMapCase>& LaneMapCases() {
  static const std::vector<LaneMapCase> cases = {
      {"laneQueueLimits", &Config::lane_queue_limits, 0, kMaxQueueLimit},
      {"laneTaskConcurrencyLimits", &Config::lane_task_concurrency_limits, 1, kMaxConcurrencyLimit},
      {"laneLendablePercent", &Config::lane_lendable_percent, 0, 100},
      {"laneBorrowingLimitPercent", &Config::lane_borrowing_limit_percent, 0,
       kMaxBorrowingLimitPercent}};
  return cases;
}

TEST(ConfigWaiting, LaneMapsMergeLaneByLaneOverTheBase) {
  for (const LaneMapCase& m : LaneMapCases()) {
    Config base;
    base.*m.field = {{"critic", m.low}, {"tool_call", m.high}};
    auto r = ParseConfigJson("{\"" + m.key + "\": {\"critic\": " + std::to_string(m.high) +
                                 ", \"file_read\": " + std::to_string(m.low) + "}}",
                             base);
    ASSERT_TRUE(r.ok()) << m.key << ": " << r.error().message();
    EXPECT_EQ((*r).*m.field,
              (Lanes{{"critic", m.high}, {"file_read", m.low}, {"tool_call", m.high}}))
        << m.key;
    // A document without the key keeps the base's map.
    auto kept = ParseConfigJson("{}", base);
    ASSERT_TRUE(kept.ok()) << kept.error().message();
    EXPECT_EQ((*kept).*m.field, base.*m.field) << m.key;
  }
}

TEST(ConfigWaiting, LaneMapBoundsAreInclusive) {
  for (const LaneMapCase& m : LaneMapCases()) {
    for (int ok : {m.low, m.high}) {
      auto r = ParseConfigJson("{\"" + m.key + "\": {\"critic\": " + std::to_string(ok) + "}}");
      ASSERT_TRUE(r.ok()) << m.key << " = " << ok << ": " << r.error().message();
      EXPECT_EQ(((*r).*m.field).at("critic"), ok);
    }
    for (int bad : {m.low - 1, m.high + 1}) {
      auto r = ParseConfigJson("{\"" + m.key + "\": {\"critic\": " + std::to_string(bad) + "}}");
      ASSERT_FALSE(r.ok()) << m.key << " = " << bad;
      EXPECT_EQ(r.error().field(), m.key + ".critic");
      EXPECT_EQ(r.error().value(), std::to_string(bad));
      EXPECT_THAT(r.error().message(),
                  HasSubstr("[" + std::to_string(m.low) + ", " + std::to_string(m.high) + "]"));
    }
  }
}

TEST(ConfigWaiting, LaneMapsNameOnlyConfiguredLanes) {
  for (const LaneMapCase& m : LaneMapCases()) {
    auto r = ParseConfigJson("{\"" + m.key + "\": {\"critc\": " + std::to_string(m.high) + "}}");
    ASSERT_FALSE(r.ok()) << m.key;
    EXPECT_EQ(r.error().field(), m.key + ".critc");
    EXPECT_EQ(r.error().value(), std::to_string(m.high));
    EXPECT_THAT(r.error().message(), HasSubstr("'" + m.key + ".critc'"));
    EXPECT_THAT(r.error().message(), HasSubstr("not in laneConcurrencyLimits"));
    EXPECT_THAT(r.error().message(), HasSubstr("did you mean 'critic'?"));
  }
}

TEST(ConfigWaiting, LaneMapsSeeTheMergedLanesWhateverTheKeyOrder) {
  for (const std::string& text :
       {std::string(R"({"laneQueueLimits": {"bulk": 2}, "laneConcurrencyLimits": {"bulk": 4}})"),
        std::string(R"({"laneConcurrencyLimits": {"bulk": 4}, "laneQueueLimits": {"bulk": 2}})")}) {
    auto r = ParseConfigJson(text);
    ASSERT_TRUE(r.ok()) << text << ": " << r.error().message();
    EXPECT_EQ(r->lane_queue_limits, (Lanes{{"bulk", 2}}));
  }
  // A lane of the base counts too.
  Config base;
  base.lane_concurrency_limits["bulk"] = 4;
  auto r = ParseConfigJson(R"({"laneLendablePercent": {"bulk": 50}})", base);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->lane_lendable_percent, (Lanes{{"bulk", 50}}));
}

TEST(ConfigWaiting, ValidateConfigChecksTheLaneMapsOfAConfigBuiltInCpp) {
  for (const LaneMapCase& m : LaneMapCases()) {
    Config c;
    (c.*m.field)["nosuch"] = m.low;
    auto r = ValidateConfig(c);
    ASSERT_FALSE(r.ok()) << m.key;
    EXPECT_EQ(r.error().field(), m.key + ".nosuch");
    EXPECT_EQ(r.error().value(), std::to_string(m.low));
    EXPECT_THAT(r.error().message(), HasSubstr("not in laneConcurrencyLimits"));

    c = Config{};
    (c.*m.field)["critic"] = m.high + 1;
    r = ValidateConfig(c);
    ASSERT_FALSE(r.ok()) << m.key;
    EXPECT_EQ(r.error().field(), m.key + ".critic");
    EXPECT_EQ(r.error().value(), std::to_string(m.high + 1));

    c = Config{};
    (c.*m.field)["critic"] = m.low - 1;
    r = ValidateConfig(c);
    ASSERT_FALSE(r.ok()) << m.key;
    EXPECT_EQ(r.error().field(), m.key + ".critic");

    c = Config{};
    (c.*m.field)["critic"] = m.high;
    EXPECT_TRUE(ValidateConfig(c).ok()) << m.key;
  }
}

TEST(ConfigWaiting, ValidateConfigChecksTheScalarsOfAConfigBuiltInCpp) {
  Config c;
  c.default_queue_limit = -1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "defaultQueueLimit");
  c.default_queue_limit = kMaxQueueLimit + 1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "defaultQueueLimit");
  c = Config{};
  c.queue_aging_ms = 0;
  EXPECT_EQ(ValidateConfig(c).error().field(), "queueAgingMs");
  c.queue_aging_ms = kMaxTimeoutMs + 1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "queueAgingMs");
  c = Config{};
  c.task_concurrency_limit = -1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "taskConcurrencyLimit");
  c.task_concurrency_limit = kMaxConcurrencyLimit + 1;
  EXPECT_EQ(ValidateConfig(c).error().field(), "taskConcurrencyLimit");
  c = Config{};
  c.task_quota_action = static_cast<TaskQuotaAction>(7);
  auto r = ValidateConfig(c);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "taskQuotaAction");
  EXPECT_EQ(r.error().value(), "7");
  // The bounds themselves pass.
  c = Config{};
  c.default_queue_limit = kMaxQueueLimit;
  c.queue_aging_ms = kMaxTimeoutMs;
  c.task_concurrency_limit = kMaxConcurrencyLimit;
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.default_queue_limit = 0;
  c.queue_aging_ms = 1;
  c.task_concurrency_limit = 0;
  EXPECT_TRUE(ValidateConfig(c).ok());
}

TEST(ConfigWaiting, TaskQuotaActionErrorNamesTheChoices) {
  auto r = ParseConfigJson(R"({"taskQuotaAction": "drop"})");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.error().message(), HasSubstr("\"drop\""));
  EXPECT_THAT(r.error().message(), HasSubstr("\"refuse\" or \"queue\""));
  r = ParseConfigJson(R"({"taskQuotaAction": null})");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().field(), "taskQuotaAction");
  EXPECT_THAT(r.error().message(), HasSubstr("got null"));
}

TEST(ConfigWaiting, RoundTripOverABaseWithLaneMaps) {
  Config base;
  base.lane_queue_limits = {{"critic", 1}};
  base.lane_lendable_percent = {{"file_read", 10}};
  Config c = base;
  c.lane_queue_limits["tool_call"] = 9;
  c.lane_lendable_percent["file_read"] = 20;
  c.lane_borrowing_limit_percent["critic"] = 300;
  c.lane_task_concurrency_limits["critic"] = 1;
  c.task_quota_action = TaskQuotaAction::kQueue;
  ASSERT_TRUE(ValidateConfig(c).ok());
  auto r = ParseConfigJson(ConfigToJson(c), base);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(*r, c);
}

TEST(ConfigWaiting, DuplicateLanesInALaneMapAreWarnedAbout) {
  std::vector<std::string> warnings;
  auto r =
      ParseConfigJson(R"({"laneQueueLimits": {"critic": 1, "critic": 2}})", Config{}, &warnings);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(r->lane_queue_limits.at("critic"), 2);
  EXPECT_THAT(warnings, ::testing::ElementsAre(HasSubstr("'laneQueueLimits.critic'")));
}

}  // namespace
}  // namespace laneguard
