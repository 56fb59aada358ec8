// Live config changes (ResourceBudgetManager::UpdateConfig): raised limits grant waiters at once,
// lowered ones keep held slots and only stop new grants, what cannot change live is refused with
// an error naming the key and changes nothing. Most tests run on a ManualClock with no background
// thread; the stress test at the end runs real threads (and is meant for ThreadSanitizer).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "laneguard/manager.h"
#include "support/acquire_answer.h"
#include "support/fake_memory_probe.h"

namespace laneguard {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kNanosPerMs = 1'000'000;

using testing_support::Answer;

RejectReason ReasonOf(const Result<Slot>& r) { return r.error().rejection()->reason; }

class UpdateConfigTest : public ::testing::Test {
 protected:
  // Lanes "a" and "b" with the given limits, and the global limit.
  static Config Lanes(int a, int b, int global) {
    Config c;
    c.lane_concurrency_limits = {{"a", a}, {"b", b}};
    c.global_concurrency_limit = global;
    return c;
  }
  std::unique_ptr<ResourceBudgetManager> Make(Config config, int max_global_limit = 0) {
    ManagerOptions options;
    options.clock = &clock_;
    options.memory_probe = std::make_unique<testing_support::FakeMemoryProbe>(
        std::make_shared<testing_support::FakeMemoryProbe::Figures>());
    options.start_background_thread = false;
    options.max_global_limit = max_global_limit;
    auto m = ResourceBudgetManager::Create(std::move(config), std::move(options));
    EXPECT_TRUE(m.ok()) << (m.ok() ? "" : m.error().message());
    return std::move(m).value();
  }
  // Asserts that `update` is refused naming `key` and `value` (and the message `fragment`), and
  // that nothing changed: the config and the limits are as before.
  static void ExpectRefused(ResourceBudgetManager& m, Config update, const std::string& key,
                            const std::string& value, const std::string& fragment) {
    const Config before = m.config();
    const ConcurrencyStatus status_before = m.GetConcurrencyStatus();
    auto r = m.UpdateConfig(std::move(update));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(r.error().field(), key);
    EXPECT_EQ(r.error().value(), value);
    EXPECT_THAT(r.error().message(), HasSubstr(fragment));
    EXPECT_EQ(m.config(), before);
    const ConcurrencyStatus status_after = m.GetConcurrencyStatus();
    EXPECT_EQ(status_after.global.limit, status_before.global.limit);
    for (const auto& [lane, count] : status_before.lanes) {
      EXPECT_EQ(status_after.lanes.at(lane).limit, count.limit) << lane;
      EXPECT_EQ(status_after.lanes.at(lane).queue_limit, count.queue_limit) << lane;
    }
  }

  ManualClock clock_;
};

TEST_F(UpdateConfigTest, RaisingALaneLimitGrantsQueuedWaitersAtOnce) {
  auto m = Make(Lanes(1, 2, 8));
  Result<Slot> held = m->TryAcquire("t", "a");
  ASSERT_TRUE(held.ok());
  Answer first, second, third;
  m->AcquireAsync("t1", "a", {}, first.Callback());
  m->AcquireAsync("t2", "a", {}, second.Callback());
  m->AcquireAsync("t3", "a", {}, third.Callback());
  ASSERT_EQ(m->GetConcurrencyStatus().lanes.at("a").queued, 3);

  auto updated = m->UpdateConfig(Lanes(3, 2, 8));
  ASSERT_TRUE(updated.ok()) << updated.error().message();
  EXPECT_EQ(updated->lane_concurrency_limits.at("a"), 3);
  // Granted before UpdateConfig returned, in queue order; the third still waits.
  EXPECT_EQ(first.calls, 1);
  EXPECT_TRUE(first.granted());
  EXPECT_EQ(second.calls, 1);
  EXPECT_TRUE(second.granted());
  EXPECT_EQ(third.calls, 0);
  const ConcurrencyStatus s = m->GetConcurrencyStatus();
  EXPECT_EQ(s.lanes.at("a").limit, 3);
  EXPECT_EQ(s.lanes.at("a").active, 3);
  EXPECT_EQ(s.lanes.at("a").queued, 1);
  EXPECT_EQ(m->GetStatistics().lanes.at("a").limit, 3);
  EXPECT_EQ(m->config().lane_concurrency_limits.at("a"), 3);

  held->Release(true);
  EXPECT_EQ(third.calls, 1);
  EXPECT_TRUE(third.granted());
}

TEST_F(UpdateConfigTest, RaisingTheGlobalLimitGrantsWaitersAtOnce) {
  auto m = Make(Lanes(2, 2, 2), /*max_global_limit=*/8);
  Result<Slot> a = m->TryAcquire("t", "a");
  Result<Slot> b = m->TryAcquire("t", "b");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "a")), RejectReason::kGlobalLimit);
  Answer waiter;
  m->AcquireAsync("w", "a", {}, waiter.Callback());
  ASSERT_EQ(waiter.calls, 0);

  ASSERT_TRUE(m->UpdateConfig(Lanes(2, 2, 3)).ok());
  EXPECT_EQ(waiter.calls, 1);
  EXPECT_TRUE(waiter.granted());
  EXPECT_EQ(m->GetConcurrencyStatus().global.limit, 3);
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 3);
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "b")), RejectReason::kGlobalLimit);
}

TEST_F(UpdateConfigTest, LoweringALaneLimitKeepsHeldSlotsAndOnlyStopsNewGrants) {
  auto m = Make(Lanes(3, 2, 8));
  std::vector<Slot> held;
  for (int i = 0; i < 3; ++i) held.push_back(std::move(m->TryAcquire("t", "a")).value());

  ASSERT_TRUE(m->UpdateConfig(Lanes(1, 2, 8)).ok());
  for (const Slot& s : held) EXPECT_TRUE(s.valid());
  ConcurrencyStatus status = m->GetConcurrencyStatus();
  EXPECT_EQ(status.lanes.at("a").active, 3);
  EXPECT_EQ(status.lanes.at("a").limit, 1);
  Result<Slot> refused = m->TryAcquire("t", "a");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ReasonOf(refused), RejectReason::kLaneLimit);
  EXPECT_EQ(refused.error().rejection()->limit, 1);
  EXPECT_EQ(refused.error().rejection()->active, 3);
  EXPECT_TRUE(m->TryAcquire("t", "b").ok());  // other lanes are untouched

  // Refused until the releases bring the lane below its new limit.
  held[0].Release(true);
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "a")), RejectReason::kLaneLimit);
  held[1].Release(true);
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "a")), RejectReason::kLaneLimit);
  held[2].Release(true);
  Result<Slot> granted = m->TryAcquire("t", "a");
  EXPECT_TRUE(granted.ok());
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "a")), RejectReason::kLaneLimit);
}

TEST_F(UpdateConfigTest, LoweringTheGlobalLimitKeepsHeldSlotsAndOnlyStopsNewGrants) {
  auto m = Make(Lanes(2, 2, 4));
  Result<Slot> a = m->TryAcquire("t", "a");
  Result<Slot> b1 = m->TryAcquire("t", "b");
  Result<Slot> b2 = m->TryAcquire("t", "b");
  ASSERT_TRUE(a.ok() && b1.ok() && b2.ok());

  ASSERT_TRUE(m->UpdateConfig(Lanes(2, 2, 2)).ok());
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 3);
  EXPECT_EQ(m->GetConcurrencyStatus().global.limit, 2);
  Result<Slot> refused = m->TryAcquire("t", "a");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ReasonOf(refused), RejectReason::kGlobalLimit);
  EXPECT_EQ(refused.error().rejection()->limit, 2);

  b1->Release(true);  // 2 held: still at the new limit
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "a")), RejectReason::kGlobalLimit);
  b2->Release(true);  // 1 held
  EXPECT_TRUE(m->TryAcquire("t", "a").ok());
}

TEST_F(UpdateConfigTest, LoweredLimitHandsOnToWaitersOnlyBelowTheNewLimit) {
  auto m = Make(Lanes(2, 2, 8));
  Result<Slot> h1 = m->TryAcquire("t", "a");
  Result<Slot> h2 = m->TryAcquire("t", "a");
  Answer waiter;
  m->AcquireAsync("w", "a", {}, waiter.Callback());
  ASSERT_TRUE(m->UpdateConfig(Lanes(1, 2, 8)).ok());
  h1->Release(true);  // 1 held, limit 1: the waiter keeps waiting
  EXPECT_EQ(waiter.calls, 0);
  h2->Release(true);
  EXPECT_EQ(waiter.calls, 1);
  EXPECT_TRUE(waiter.granted());
}

TEST_F(UpdateConfigTest, ALoweredQueueLimitRefusesNothingAlreadyQueued) {
  Config c = Lanes(1, 2, 8);
  c.lane_queue_limits = {{"a", 3}};
  // Declared before the manager: what they hold at the end is released, and what still waits is
  // refused, into answers that are still alive (a slot granted into a destroyed answer would keep
  // the manager's state alive: LeakSanitizer).
  Answer w1, w2, w3, late;
  auto m = Make(c);
  Result<Slot> held = m->TryAcquire("t", "a");
  m->AcquireAsync("t1", "a", {}, w1.Callback());
  m->AcquireAsync("t2", "a", {}, w2.Callback());
  m->AcquireAsync("t3", "a", {}, w3.Callback());

  c.lane_queue_limits = {{"a", 1}};
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  EXPECT_EQ(w1.calls + w2.calls + w3.calls, 0);
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("a").queued, 3);
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("a").queue_limit, 1);
  m->AcquireAsync("t4", "a", {}, late.Callback());
  ASSERT_EQ(late.calls, 1);
  EXPECT_EQ(late.reason(), RejectReason::kQueueFull);

  held->Release(true);
  EXPECT_TRUE(w1.granted());
  EXPECT_EQ(w2.calls + w3.calls, 0);

  // The default queue limit is live as well (lane b uses it).
  c.default_queue_limit = 0;
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("b").queue_limit, 0);
}

TEST_F(UpdateConfigTest, TaskQuotasAndLendingCanBeTurnedOnAndOffLive) {
  Config c = Lanes(2, 2, 8);
  auto m = Make(c);
  Result<Slot> first = m->TryAcquire("t", "a");
  ASSERT_TRUE(first.ok());

  // Quotas on: calls from now on count (the one already held does not).
  c.task_concurrency_limit = 1;
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  Result<Slot> counted = m->TryAcquire("t", "b");
  ASSERT_TRUE(counted.ok());
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "b")), RejectReason::kTaskQuota);
  EXPECT_TRUE(m->TryAcquire("u", "b").ok());

  // Off: the counts are forgotten, and the task may take what the lanes allow.
  c.task_concurrency_limit = 0;
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  Result<Slot> second_a = m->TryAcquire("t", "a");
  EXPECT_TRUE(second_a.ok());
  first->Release(true);
  counted->Release(true);
  second_a->Release(true);

  // On again: nothing left over from before refuses the task.
  c.task_concurrency_limit = 2;
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  Result<Slot> x = m->TryAcquire("t", "a");
  Result<Slot> y = m->TryAcquire("t", "a");
  EXPECT_TRUE(x.ok());
  EXPECT_TRUE(y.ok());
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "b")), RejectReason::kTaskQuota);
  x->Release(true);
  y->Release(true);

  // Lending on: lane a borrows b's idle places beyond its limit of 2.
  c.task_concurrency_limit = 0;
  c.lane_lendable_percent = {{"b", 100}};
  c.lane_borrowing_limit_percent = {{"a", 100}};
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  std::vector<Slot> in_a;
  for (int i = 0; i < 3; ++i) {
    Result<Slot> s = m->TryAcquire("t", "a");
    ASSERT_TRUE(s.ok()) << i;
    in_a.push_back(std::move(s).value());
  }
  EXPECT_TRUE(in_a.back().borrowed());
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("a").borrowed, 1);

  // Lending off: the borrowed place is kept; the lane is full at its own limit.
  c.lane_lendable_percent.clear();
  c.lane_borrowing_limit_percent.clear();
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  EXPECT_EQ(ReasonOf(m->TryAcquire("t", "a")), RejectReason::kLaneLimit);
  in_a.clear();  // released (abandoned)
  EXPECT_TRUE(m->TryAcquire("t", "a").ok());
}

TEST_F(UpdateConfigTest, TimeoutsAndMemoryLimitsApplyToCallsAdmittedAfter) {
  auto figures = std::make_shared<testing_support::FakeMemoryProbe::Figures>();
  figures->rss = 300;
  ManagerOptions options;
  options.clock = &clock_;
  options.memory_probe = std::make_unique<testing_support::FakeMemoryProbe>(figures);
  options.start_background_thread = false;
  Config c = Lanes(2, 2, 8);
  auto m = ResourceBudgetManager::Create(c, std::move(options)).value();
  Result<Slot> before = m->TryAcquire("t", "a");
  ASSERT_TRUE(before.ok());

  c.default_timeout_ms = 1000;
  c.timeout_escalation_factor = 2;
  c.max_rss_mb = 400;
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  Result<Slot> after = m->TryAcquire("t", "a");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->deadline_mono_nanos() - after->start_mono_nanos(), 1000 * kNanosPerMs);
  EXPECT_EQ(after->hard_deadline_mono_nanos() - after->start_mono_nanos(), 2000 * kNanosPerMs);
  // The call admitted before keeps its deadlines.
  EXPECT_EQ(before->deadline_mono_nanos() - before->start_mono_nanos(),
            Config{}.default_timeout_ms * kNanosPerMs);
  after->Release(true);

  c.max_rss_mb = 200;  // below the sampled 300 MB
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  Result<Slot> refused = m->TryAcquire("t", "a");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ReasonOf(refused), RejectReason::kMemoryLimit);
  EXPECT_EQ(refused.error().rejection()->max_rss_mb, 200);
  c.enable_memory_guards = false;
  ASSERT_TRUE(m->UpdateConfig(c).ok());
  EXPECT_TRUE(m->TryAcquire("t", "a").ok());
}

TEST_F(UpdateConfigTest, AddingOrRemovingALaneIsAnErrorNamingTheLane) {
  auto m = Make(Lanes(1, 2, 8));
  Config added = Lanes(1, 2, 8);
  added.lane_concurrency_limits["critic"] = 1;
  ExpectRefused(*m, added, "laneConcurrencyLimits", "\"critic\"", "'critic' cannot be added");
  Config removed = Lanes(1, 2, 8);
  removed.lane_concurrency_limits.erase("b");
  ExpectRefused(*m, removed, "laneConcurrencyLimits", "\"b\"", "'b' cannot be removed");
  // Nothing changed along with the refused lane: the limit of a, changed too, is as before.
  added.lane_concurrency_limits["a"] = 2;
  ExpectRefused(*m, added, "laneConcurrencyLimits", "\"critic\"", "restart");
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("a").limit, 1);
}

TEST_F(UpdateConfigTest, AnInvalidConfigIsAnErrorNamingTheKeyAndChangesNothing) {
  auto m = Make(Lanes(1, 2, 8));
  Config zero = Lanes(0, 2, 8);
  ExpectRefused(*m, zero, "laneConcurrencyLimits.a", "0", "lane limit must be within");
  Config above_global = Lanes(9, 2, 8);
  ExpectRefused(*m, above_global, "laneConcurrencyLimits.a", "9", "globalConcurrencyLimit (8)");
  Config bad_queue = Lanes(4, 2, 8);
  bad_queue.default_queue_limit = -1;
  ExpectRefused(*m, bad_queue, "defaultQueueLimit", "-1", "must be within");
}

TEST_F(UpdateConfigTest, KeysFixedAtStartAreErrorsNamingBothValues) {
  auto m = Make(Lanes(1, 2, 8));
  Config c = Lanes(2, 2, 8);
  c.metrics_capacity = 20000;
  ExpectRefused(*m, c, "metricsCapacity", "20000", "(it is 10000); restart");
  c = Lanes(2, 2, 8);
  c.timer_tick_ms = 5;
  ExpectRefused(*m, c, "timerTickMs", "5", "(it is 10)");
  c = Lanes(2, 2, 8);
  c.span_sample_rate = 0.5;
  ExpectRefused(*m, c, "spanSampleRate", "0.5", "(it is 1.0)");
  c = Lanes(2, 2, 8);
  c.enable_span_emission = false;
  ExpectRefused(*m, c, "enableSpanEmission", "false", "(it is true)");
}

TEST_F(UpdateConfigTest, AGlobalLimitPastTheCapIsAnErrorNamingTheCap) {
  auto m = Make(Lanes(1, 2, 8));  // no max_global_limit: the cap is the config's 8
  ExpectRefused(*m, Lanes(1, 2, 9), "globalConcurrencyLimit", "9", "restart to raise it past 8");

  auto roomy = Make(Lanes(1, 2, 8), /*max_global_limit=*/1023);
  ASSERT_TRUE(roomy->UpdateConfig(Lanes(1000, 2, 1023)).ok());
  EXPECT_EQ(roomy->GetConcurrencyStatus().global.limit, 1023);
  EXPECT_EQ(roomy->GetConcurrencyStatus().lanes.at("a").limit, 1000);
  ExpectRefused(*roomy, Lanes(1, 2, 1024), "globalConcurrencyLimit", "1024",
                "restart to raise it past 1023");
  // Every place up to the raised limit can be taken: the counts fit their fields.
  std::vector<Slot> held;
  for (int i = 0; i < 1000; ++i) {
    Result<Slot> s = roomy->TryAcquire("t", "a");
    ASSERT_TRUE(s.ok()) << i;
    held.push_back(std::move(s).value());
  }
  EXPECT_EQ(ReasonOf(roomy->TryAcquire("t", "a")), RejectReason::kLaneLimit);
  EXPECT_TRUE(roomy->TryAcquire("t", "b").ok());
  EXPECT_EQ(roomy->GetConcurrencyStatus().lanes.at("a").active, 1000);
  EXPECT_EQ(roomy->GetConcurrencyStatus().lanes.at("b").active, 0);
}

TEST_F(UpdateConfigTest, MaxGlobalLimitOutOfRangeIsAnError) {
  ManagerOptions options;
  options.start_background_thread = false;
  options.max_global_limit = -1;
  auto m = ResourceBudgetManager::Create(Lanes(1, 2, 8), std::move(options));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().field(), "max_global_limit");
  EXPECT_EQ(m.error().value(), "-1");
}

TEST_F(UpdateConfigTest, OldConfigReferencesStayValidAndUnchanged) {
  auto m = Make(Lanes(1, 2, 8));
  const Config& old = m->config();
  auto updated = m->UpdateConfig(Lanes(2, 2, 8));
  ASSERT_TRUE(updated.ok());
  EXPECT_EQ(old.lane_concurrency_limits.at("a"), 1);
  EXPECT_EQ(m->config().lane_concurrency_limits.at("a"), 2);
  EXPECT_EQ(m->config(), *updated);
  // The same config again changes nothing and is not an error.
  const Config* current = &m->config();
  ASSERT_TRUE(m->UpdateConfig(Lanes(2, 2, 8)).ok());
  EXPECT_EQ(&m->config(), current);
}

// Threads take and release slots (lock-free, gated and waiting) while another flips the limits up
// and down. The test counts what it holds per lane: no lane ever holds more than the highest
// limit set, the global count more than the highest global limit, every request is answered
// exactly once, and once the flipping stops, calls granted after it respect the final limits.
TEST(UpdateConfigStressTest, LimitsFlipWhileThreadsAcquireAndRelease) {
  Config c;
  c.lane_concurrency_limits = {{"a", 2}, {"b", 2}};
  c.global_concurrency_limit = 4;
  ManagerOptions options;
  options.max_global_limit = 6;
  options.memory_probe = std::make_unique<testing_support::FakeMemoryProbe>(
      std::make_shared<testing_support::FakeMemoryProbe::Figures>());
  auto m = ResourceBudgetManager::Create(c, std::move(options)).value();

  // Lane a may borrow up to half its limit beyond it while lending is on.
  constexpr int kHighestLane = 4, kHighestLaneA = kHighestLane + kHighestLane / 2;
  constexpr int kHighestGlobal = 6;
  constexpr int kFinalA = 1, kFinalB = 3, kFinalGlobal = 4;
  std::atomic<int> held[2] = {0, 0};
  std::atomic<int> held_total{0};
  std::atomic<int> max_seen[2] = {0, 0};
  std::atomic<int> max_total{0};
  std::atomic<bool> over_final{false};
  std::atomic<bool> check_final{false};
  std::atomic<bool> stop{false};
  std::atomic<int64_t> requests{0}, answers{0}, double_answers{0}, grants{0};

  const auto note_max = [](std::atomic<int>& max, int value) {
    for (int seen = max.load(); value > seen && !max.compare_exchange_weak(seen, value);) {
    }
  };
  // Holds `slot` briefly, counting it, then releases it.
  const auto hold = [&](Slot slot, int lane) {
    const int in_lane = held[lane].fetch_add(1) + 1;
    const int total = held_total.fetch_add(1) + 1;
    note_max(max_seen[lane], in_lane);
    note_max(max_total, total);
    if (check_final.load() && (in_lane > (lane == 0 ? kFinalA : kFinalB) || total > kFinalGlobal)) {
      over_final.store(true);
    }
    grants.fetch_add(1);
    std::this_thread::yield();
    held_total.fetch_sub(1);
    held[lane].fetch_sub(1);
    slot.Release(true);
  };
  // One request's answer, waited for with a bounded deadline.
  struct Pending {
    std::mutex mu;
    std::condition_variable cv;
    int calls = 0;
    std::optional<Result<Slot>> result;
  };
  const auto worker = [&](int seed) {
    std::minstd_rand rng(static_cast<unsigned>(seed));
    while (!stop.load()) {
      const int lane = static_cast<int>(rng() % 2);
      const char* name = lane == 0 ? "a" : "b";
      if (rng() % 3 == 0) {
        Result<Slot> r = m->TryAcquire("task", name);
        if (r.ok()) hold(std::move(r).value(), lane);
        continue;
      }
      auto p = std::make_shared<Pending>();
      AcquireOptions o;
      o.wait_ms = 1 + static_cast<int64_t>(rng() % 20);
      requests.fetch_add(1);
      m->AcquireAsync("task", name, std::move(o), [p, &answers, &double_answers](Result<Slot> r) {
        std::lock_guard<std::mutex> lock(p->mu);
        if (++p->calls > 1) double_answers.fetch_add(1);
        answers.fetch_add(1);
        p->result.emplace(std::move(r));
        p->cv.notify_one();
      });
      std::unique_lock<std::mutex> lock(p->mu);
      ASSERT_TRUE(p->cv.wait_for(lock, std::chrono::seconds(30), [&] { return p->calls > 0; }))
          << "a request was never answered";
      std::optional<Result<Slot>> r = std::move(p->result);
      lock.unlock();
      if (r->ok()) hold(std::move(*r).value(), lane);
    }
  };
  const auto config_reader = [&] {
    while (!stop.load()) {
      const Config& now = m->config();
      EXPECT_LE(now.global_concurrency_limit, kHighestGlobal);
      EXPECT_GE(m->GetConcurrencyStatus().global.limit, 1);
    }
  };

  const auto run_phase = [&](int threads, int updates, bool flip) {
    stop.store(false);
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i) pool.emplace_back(worker, i + 1 + (flip ? 0 : 100));
    pool.emplace_back(config_reader);
    std::minstd_rand rng(7);
    for (int i = 0; i < updates; ++i) {
      Config next = c;
      if (flip) {
        next.global_concurrency_limit = 4 + static_cast<int>(rng() % 3);
        next.lane_concurrency_limits = {{"a", 1 + static_cast<int>(rng() % kHighestLane)},
                                        {"b", 1 + static_cast<int>(rng() % kHighestLane)}};
        next.default_queue_limit = static_cast<int>(rng() % 4);
        if (rng() % 2 == 0) next.task_concurrency_limit = 2 + static_cast<int>(rng() % 3);
        if (rng() % 2 == 0) {
          next.lane_lendable_percent = {{"b", 50}};
          next.lane_borrowing_limit_percent = {{"a", 50}};
        }
      } else {
        next.global_concurrency_limit = kFinalGlobal;
        next.lane_concurrency_limits = {{"a", kFinalA}, {"b", kFinalB}};
      }
      auto r = m->UpdateConfig(next);
      ASSERT_TRUE(r.ok()) << r.error().message();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (!flip) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    stop.store(true);
    for (std::thread& t : pool) t.join();
  };

  run_phase(/*threads=*/4, /*updates=*/300, /*flip=*/true);
  // The final limits; every slot of the flipping phase is released (the workers have joined), so
  // every grant from here on is decided under them.
  run_phase(/*threads=*/0, /*updates=*/1, /*flip=*/false);
  check_final.store(true);
  run_phase(/*threads=*/4, /*updates=*/0, /*flip=*/false);

  EXPECT_LE(max_seen[0].load(), kHighestLaneA);
  EXPECT_LE(max_seen[1].load(), kHighestLane);
  EXPECT_LE(max_total.load(), kHighestGlobal);
  EXPECT_FALSE(over_final.load());
  EXPECT_EQ(answers.load(), requests.load());
  EXPECT_EQ(double_answers.load(), 0);
  EXPECT_GT(grants.load(), 0);
  const ConcurrencyStatus s = m->GetConcurrencyStatus();
  EXPECT_EQ(s.global.active, 0);
  EXPECT_EQ(s.global.limit, kFinalGlobal);
  EXPECT_EQ(s.lanes.at("a").limit, kFinalA);
  EXPECT_EQ(s.lanes.at("b").limit, kFinalB);
  EXPECT_EQ(s.lanes.at("a").active + s.lanes.at("b").active, 0);
}

}  // namespace
}  // namespace laneguard
