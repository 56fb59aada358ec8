#include "laneguard/observe/metric_emitter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "support/manual_manager.h"

namespace laneguard {
namespace {

class MetricEmitterTest : public testing_support::ManualManagerTest {
 protected:
  void SetUp() override {
    Config config;
    config.lane_concurrency_limits = {{"tool_call", 10}, {"critic", 5}};
    config.global_concurrency_limit = 10;
    MakeManager(config);
  }
  void Calls(int n, int64_t ms, bool success) {
    ManualManagerTest::Calls("tool_call", n, ms, success);
  }
};

TEST_F(MetricEmitterTest, FlatMetricsHaveTheSpecKeys) {
  Calls(2, 40, true);
  Calls(1, 10, false);
  auto held = manager_->TryAcquire("t", "critic");
  ASSERT_TRUE(held.ok());
  figures_->rss = 123;
  manager_->SampleMemoryNow();
  const FlatMetrics m = CollectFlatMetrics(*manager_);
  EXPECT_EQ(m.at("worker.calls.total"), 3);
  EXPECT_EQ(m.at("worker.calls.success"), 2);
  EXPECT_EQ(m.at("worker.calls.failure"), 1);
  EXPECT_EQ(m.at("worker.calls.timeout"), 0);
  EXPECT_DOUBLE_EQ(m.at("worker.duration.avg_ms"), 30);
  EXPECT_EQ(m.at("memory.rss_mb"), 123);
  EXPECT_EQ(m.at("memory.heap_used_mb"), 50);
  EXPECT_EQ(m.at("concurrency.global.active"), 1);
  EXPECT_EQ(m.at("concurrency.global.limit"), 10);
  EXPECT_EQ(m.at("concurrency.lane.critic.active"), 1);
  EXPECT_EQ(m.at("concurrency.lane.critic.limit"), 5);
  EXPECT_EQ(m.at("concurrency.lane.tool_call.active"), 0);
  EXPECT_EQ(m.size(), 13u);
  held->Release(true);
}

TEST_F(MetricEmitterTest, EmitterRunsOnItsScheduleAndOnDemand) {
  std::vector<FlatMetrics> seen;
  auto emitter =
      MetricEmitter::Create(manager_.get(), [&seen](const FlatMetrics& m) { seen.push_back(m); },
                            {.interval = std::chrono::seconds(30)})
          .value();
  EXPECT_FALSE(emitter->Tick());
  clock_.AdvanceMs(29'999);
  EXPECT_FALSE(emitter->Tick());
  Calls(1, 1, true);
  EXPECT_TRUE(emitter->Tick());
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].at("worker.calls.total"), 1);
  EXPECT_FALSE(emitter->Tick());
  emitter->EmitNow();
  EXPECT_EQ(seen.size(), 2u);
  clock_.AdvanceMs(30'000);  // the schedule restarts at the last emission, on demand or not
  EXPECT_TRUE(emitter->Tick());
  EXPECT_EQ(seen.size(), 3u);
}

TEST_F(MetricEmitterTest, EmitterThreadStopsCleanly) {
  std::atomic<int> count{0};
  auto emitter =
      MetricEmitter::Create(manager_.get(), [&count](const FlatMetrics&) { count.fetch_add(1); },
                            {.interval = std::chrono::milliseconds(2)})
          .value();
  emitter->Start();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (count.load() < 3 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  emitter->Stop();
  const int after_stop = count.load();
  EXPECT_GE(after_stop, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(count.load(), after_stop);
}

TEST_F(MetricEmitterTest, EmitterOptionsAreChecked) {
  auto bad = MetricEmitter::Create(manager_.get(), nullptr);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "callback");
  bad = MetricEmitter::Create(manager_.get(), [](const FlatMetrics&) {},
                              {.interval = std::chrono::milliseconds(0)});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "intervalMs");
}

}  // namespace
}  // namespace laneguard
