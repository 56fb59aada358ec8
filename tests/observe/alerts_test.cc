#include "laneguard/observe/alerts.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "support/manual_manager.h"

namespace laneguard {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kStartUnix = 1'767'225'600'000'000'000;  // ManualClock's default start

class AlertsTest : public testing_support::ManualManagerTest {
 protected:
  void SetUp() override {
    Config config;
    config.lane_concurrency_limits = {{"tool_call", 10}, {"critic", 5}};
    config.global_concurrency_limit = 10;
    MakeManager(config);
    AlertEvaluatorOptions alert_options;
    alert_options.logger = logger_;
    alert_options.interval = std::chrono::seconds(10);
    alerts_ = AlertEvaluator::Create(manager_.get(), alert_options).value();
  }

  Alert Get(std::string_view name, std::string_view lane = {}) {
    for (const Alert& a : alerts_->GetAlerts()) {
      if (a.name == name && a.lane == lane) return a;
    }
    ADD_FAILURE() << "no alert " << name;
    return {};
  }

  void Calls(int n, int64_t ms, bool success) {
    ManualManagerTest::Calls("tool_call", n, ms, success);
  }

  std::unique_ptr<AlertEvaluator> alerts_;
};

TEST_F(AlertsTest, AllStartResolvedInRuleOrder) {
  std::vector<std::string> names;
  for (const Alert& a : alerts_->GetAlerts()) {
    EXPECT_EQ(a.state, AlertState::kResolved) << a.name;
    EXPECT_EQ(a.since_unix_nanos, kStartUnix);
    names.push_back(a.name + (a.lane.empty() ? "" : "/" + a.lane));
  }
  EXPECT_THAT(names, ::testing::ElementsAre(
                         "LaneguardRssNearLimit", "LaneguardGlobalConcurrencyHigh",
                         "LaneguardTimeoutEscalations", "LaneguardErrorRateHigh",
                         "LaneguardHeapHigh", "LaneguardLaneConcurrencyHigh/critic",
                         "LaneguardLaneConcurrencyHigh/tool_call", "LaneguardDurationIncreasing"));
  EXPECT_TRUE(alerts_->Evaluate().size() == 8u);
  EXPECT_TRUE(alerts_->Firing().empty());
}

TEST_F(AlertsTest, RssFiresThenResolvesWithSinceAndValue) {
  figures_->rss = 470;  // > 0.9 x 512 = 460.8
  manager_->SampleMemoryNow();
  clock_.AdvanceMs(1000);
  alerts_->Evaluate();
  Alert rss = Get("LaneguardRssNearLimit");
  EXPECT_EQ(rss.state, AlertState::kFiring);
  EXPECT_EQ(rss.severity, AlertSeverity::kCritical);
  EXPECT_EQ(rss.since_unix_nanos, kStartUnix + 1'000'000'000);
  EXPECT_EQ(rss.value, 470);
  EXPECT_DOUBLE_EQ(rss.threshold, 460.8);
  ASSERT_EQ(alerts_->Firing().size(), 1u);
  EXPECT_EQ(logger_->lines_written(LogLevel::kError), 1u);

  clock_.AdvanceMs(1000);
  alerts_->Evaluate();  // still firing: no new log line, since unchanged
  EXPECT_EQ(Get("LaneguardRssNearLimit").since_unix_nanos, kStartUnix + 1'000'000'000);
  EXPECT_EQ(logger_->lines_written(LogLevel::kError), 1u);

  figures_->rss = 200;
  manager_->SampleMemoryNow();
  clock_.AdvanceMs(1000);
  alerts_->Evaluate();
  rss = Get("LaneguardRssNearLimit");
  EXPECT_EQ(rss.state, AlertState::kResolved);
  EXPECT_EQ(rss.since_unix_nanos, kStartUnix + 3'000'000'000);
  EXPECT_EQ(rss.value, 200);
  EXPECT_EQ(logger_->lines_written(LogLevel::kInfo), 1u);
  const std::string log = log_.ReadAll();
  EXPECT_THAT(log, HasSubstr(R"("msg":"Alert firing","alert":"LaneguardRssNearLimit")"));
  EXPECT_THAT(log, HasSubstr(R"("msg":"Alert resolved","alert":"LaneguardRssNearLimit")"));
}

TEST_F(AlertsTest, HeapIsAWarning) {
  figures_->heap = 401;
  manager_->SampleMemoryNow();
  alerts_->Evaluate();
  const Alert heap = Get("LaneguardHeapHigh");
  EXPECT_EQ(heap.state, AlertState::kFiring);
  EXPECT_EQ(heap.severity, AlertSeverity::kWarning);
  EXPECT_EQ(heap.threshold, 400);
  EXPECT_EQ(logger_->lines_written(LogLevel::kWarning), 1u);
}

TEST_F(AlertsTest, ConcurrencyAlertsForGlobalAndLanes) {
  std::vector<Slot> slots;
  for (int i = 0; i < 8; ++i)
    slots.push_back(std::move(manager_->TryAcquire("t", "tool_call").value()));
  alerts_->Evaluate();  // 8 is not > 8 (80% of 10)
  EXPECT_EQ(Get("LaneguardLaneConcurrencyHigh", "tool_call").state, AlertState::kResolved);
  slots.push_back(std::move(manager_->TryAcquire("t", "tool_call").value()));
  alerts_->Evaluate();
  const Alert lane = Get("LaneguardLaneConcurrencyHigh", "tool_call");
  EXPECT_EQ(lane.state, AlertState::kFiring);
  EXPECT_EQ(lane.value, 9);
  EXPECT_EQ(lane.threshold, 8);
  EXPECT_EQ(Get("LaneguardLaneConcurrencyHigh", "critic").state, AlertState::kResolved);
  EXPECT_EQ(Get("LaneguardGlobalConcurrencyHigh").state, AlertState::kResolved);  // 9 !> 9
  slots.push_back(std::move(manager_->TryAcquire("t", "tool_call").value()));
  alerts_->Evaluate();
  EXPECT_EQ(Get("LaneguardGlobalConcurrencyHigh").state, AlertState::kFiring);
  for (Slot& s : slots) s.Release(true);
  alerts_->Evaluate();
  EXPECT_TRUE(alerts_->Firing().empty());
}

TEST_F(AlertsTest, EscalationsFireForTheWindowTheyHappenIn) {
  auto slot = manager_->TryAcquire("t", "critic", 100);
  ASSERT_TRUE(slot.ok());
  clock_.AdvanceMs(200);  // past 100 x 1.5
  manager_->Tick();
  alerts_->Evaluate();  // the call still runs: counted when it escalates, not when released
  const Alert escalations = Get("LaneguardTimeoutEscalations");
  EXPECT_EQ(escalations.state, AlertState::kFiring);
  EXPECT_EQ(escalations.value, 1);
  slot->Release(false);
  alerts_->Evaluate();
  EXPECT_EQ(Get("LaneguardTimeoutEscalations").state, AlertState::kResolved);
}

TEST_F(AlertsTest, ErrorRateAboveFivePercentOfTheWindow) {
  Calls(19, 1, true);
  Calls(1, 1, false);  // exactly 5%: not above
  alerts_->Evaluate();
  Alert rate = Get("LaneguardErrorRateHigh");
  EXPECT_EQ(rate.state, AlertState::kResolved);
  EXPECT_DOUBLE_EQ(rate.value, 0.05);
  Calls(10, 1, true);
  Calls(1, 1, false);  // 1 of 11 in this window
  alerts_->Evaluate();
  rate = Get("LaneguardErrorRateHigh");
  EXPECT_EQ(rate.state, AlertState::kFiring);
  EXPECT_DOUBLE_EQ(rate.value, 1.0 / 11);
  alerts_->Evaluate();  // no calls: too few to judge, the state stays
  EXPECT_EQ(Get("LaneguardErrorRateHigh").state, AlertState::kFiring);
  Calls(5, 1, true);
  alerts_->Evaluate();
  EXPECT_EQ(Get("LaneguardErrorRateHigh").state, AlertState::kResolved);
}

TEST_F(AlertsTest, DurationIncreasingComparesWithThePreviousWindow) {
  Calls(3, 100, true);
  alerts_->Evaluate();  // no previous window yet
  EXPECT_EQ(Get("LaneguardDurationIncreasing").state, AlertState::kResolved);
  Calls(3, 119, true);  // +19%: not more than 20%
  alerts_->Evaluate();
  EXPECT_EQ(Get("LaneguardDurationIncreasing").state, AlertState::kResolved);
  Calls(3, 150, true);  // +26% on 119
  alerts_->Evaluate();
  Alert d = Get("LaneguardDurationIncreasing");
  EXPECT_EQ(d.state, AlertState::kFiring);
  EXPECT_DOUBLE_EQ(d.value, 150);
  EXPECT_DOUBLE_EQ(d.threshold, 1.2 * 119);
  Calls(3, 150, true);  // flat
  alerts_->Evaluate();
  EXPECT_EQ(Get("LaneguardDurationIncreasing").state, AlertState::kResolved);
}

TEST_F(AlertsTest, TickFollowsTheInterval) {
  EXPECT_FALSE(alerts_->Tick());
  clock_.AdvanceMs(9999);
  EXPECT_FALSE(alerts_->Tick());
  figures_->rss = 500;
  manager_->SampleMemoryNow();
  clock_.AdvanceMs(1);
  EXPECT_TRUE(alerts_->Tick());
  EXPECT_EQ(Get("LaneguardRssNearLimit").state, AlertState::kFiring);
  EXPECT_FALSE(alerts_->Tick());
}

TEST_F(AlertsTest, BackgroundThreadEvaluates) {
  AlertEvaluatorOptions options;
  options.interval = std::chrono::milliseconds(5);
  auto fast = AlertEvaluator::Create(manager_.get(), options).value();
  figures_->heap = 999;
  manager_->SampleMemoryNow();
  fast->Start();
  fast->Start();  // idempotent
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (fast->Firing().empty() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  fast->Stop();
  ASSERT_EQ(fast->Firing().size(), 1u);
  EXPECT_EQ(fast->Firing()[0].name, "LaneguardHeapHigh");
}

TEST_F(AlertsTest, BadOptionsAreNamed) {
  AlertEvaluatorOptions options;
  options.interval = std::chrono::milliseconds(0);
  auto bad = AlertEvaluator::Create(manager_.get(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "intervalMs");
  options = {};
  options.thresholds.error_rate = 2;
  bad = AlertEvaluator::Create(manager_.get(), options);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "errorRate");
  EXPECT_THAT(bad.error().message(), HasSubstr("2"));
  options = {};
  options.thresholds.min_calls = 0;
  EXPECT_EQ(AlertEvaluator::Create(manager_.get(), options).error().field(), "minCalls");
  EXPECT_FALSE(AlertEvaluator::Create(nullptr).ok());
}

}  // namespace
}  // namespace laneguard
