#include "laneguard/manager.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <type_traits>

#include "base/shard_count.h"
#include "core/admission_word.h"
#include "support/fake_memory_probe.h"

namespace laneguard {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using FakeProbe = testing_support::FakeMemoryProbe;

// Records every event as a compact string plus the raw events' key fields.
class RecordingObserver final : public Observer {
 public:
  struct Seen {
    EventKind kind;
    uint64_t call_id;
    std::string task_id;
    std::string lane;
    std::string message;
    RejectReason reason;
    int global_active;
    int lane_active;
    std::optional<WorkerCallMetrics> record;
    Metadata metadata;
  };
  void OnEvent(const CallEvent& e) override {
    std::lock_guard<std::mutex> guard(mu_);
    Seen s{e.kind,
           e.call_id,
           std::string(e.task_id),
           std::string(e.lane),
           std::string(e.message),
           e.reason,
           e.global_active,
           e.lane_active,
           std::nullopt,
           {}};
    if (e.record) s.record = *e.record;
    if (e.metadata) s.metadata = *e.metadata;
    seen_.push_back(std::move(s));
  }
  std::vector<Seen> seen() {
    std::lock_guard<std::mutex> guard(mu_);
    return seen_;
  }
  std::vector<EventKind> kinds() {
    std::vector<EventKind> k;
    for (const auto& s : seen()) k.push_back(s.kind);
    return k;
  }
  void clear() {
    std::lock_guard<std::mutex> guard(mu_);
    seen_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<Seen> seen_;
};

class ManagerTest : public ::testing::Test {
 protected:
  std::unique_ptr<ResourceBudgetManager> Make(Config config = Config{}) {
    ManagerOptions options;
    options.clock = &clock_;
    options.memory_probe = std::make_unique<FakeProbe>(figures_);
    options.start_background_thread = false;
    options.observers = {observer_};
    auto m = ResourceBudgetManager::Create(std::move(config), std::move(options));
    EXPECT_TRUE(m.ok()) << (m.ok() ? "" : m.error().message());
    return std::move(m).value();
  }

  ManualClock clock_;
  std::shared_ptr<FakeProbe::Figures> figures_ = std::make_shared<FakeProbe::Figures>();
  std::shared_ptr<RecordingObserver> observer_ = std::make_shared<RecordingObserver>();
};

// ---- slot acquisition and release
// -----------------------------------------------------------------

// A slot is one place in a lane: it moves, it never copies (the member-wise copies are private).
static_assert(!std::is_copy_constructible_v<Slot> && !std::is_copy_assignable_v<Slot>);
static_assert(std::is_nothrow_move_constructible_v<Slot> &&
              std::is_nothrow_move_assignable_v<Slot>);

TEST_F(ManagerTest, AcquireAndReleaseUpdatesCountsAndRecords) {
  auto m = Make();
  auto slot = m->TryAcquire("task-1", "tool_call", 5000, {{"userId", "user-1"}});
  ASSERT_TRUE(slot.ok());
  EXPECT_TRUE(slot->valid());
  EXPECT_EQ(slot->call_id_string(), "call-1");
  auto status = m->GetConcurrencyStatus();
  EXPECT_EQ(status.global.active, 1);
  EXPECT_EQ(status.global.limit, 32);
  EXPECT_EQ(status.lanes.at("tool_call").active, 1);
  EXPECT_EQ(status.lanes.at("tool_call").limit, 8);
  EXPECT_EQ(status.lanes.at("file_read").active, 0);

  clock_.AdvanceMs(250);
  EXPECT_TRUE(slot->Release(true));
  EXPECT_FALSE(slot->valid());
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("tool_call").active, 0);

  auto metrics = m->GetMetrics();
  ASSERT_EQ(metrics.size(), 1u);
  EXPECT_EQ(metrics[0].call_id, "call-1");
  EXPECT_EQ(metrics[0].task_id, "task-1");
  EXPECT_EQ(metrics[0].lane, "tool_call");
  EXPECT_DOUBLE_EQ(metrics[0].duration_ms, 250.0);
  EXPECT_TRUE(metrics[0].success);
  EXPECT_EQ(metrics[0].error_type, "");
  EXPECT_EQ(metrics[0].timeout_ms, 5000);
  EXPECT_FALSE(metrics[0].timeout_reached);
  EXPECT_EQ(metrics[0].timestamp, "2026-01-01T00:00:00.000Z");

  auto kinds = observer_->kinds();
  EXPECT_THAT(kinds, ElementsAre(EventKind::kAcquired, EventKind::kReleased));
  auto seen = observer_->seen();
  EXPECT_EQ(seen[0].task_id, "task-1");
  EXPECT_EQ(seen[0].global_active, 1);
  EXPECT_EQ(seen[0].lane_active, 1);
  EXPECT_THAT(seen[0].metadata,
              ElementsAre(std::pair<std::string, std::string>{"userId", "user-1"}));
  ASSERT_TRUE(seen[1].record.has_value());
  EXPECT_EQ(seen[1].record->call_id, "call-1");
  EXPECT_EQ(seen[1].global_active, 0);
}

// Task ids up to 39 bytes are kept in place, longer ones on the heap; entries and ring records are
// reused, so a short id after a long one (and the reverse) must not show the other's bytes.
TEST_F(ManagerTest, TaskIdsOfEveryLengthSurviveIntoTheRecordsUnchanged) {
  auto m = Make();
  std::vector<std::string> ids;
  for (size_t len : {0, 1, 38, 39, 40, 100, 3, 64, 39}) {
    std::string id;
    for (size_t i = 0; i < len; ++i) id += static_cast<char>('a' + (i * 7 + len) % 26);
    ids.push_back(id);
  }
  for (const std::string& id : ids) m->TryAcquire(id, "tool_call")->Release(true);
  std::vector<std::string> recorded;
  for (const auto& record : m->GetMetrics()) recorded.push_back(record.task_id);
  EXPECT_EQ(recorded, ids);
  std::vector<std::string> observed;
  for (const auto& e : observer_->seen())
    if (e.kind == EventKind::kReleased) observed.push_back(e.record->task_id);
  EXPECT_EQ(observed, ids);
}

TEST_F(ManagerTest, DefaultTimeoutComesFromConfig) {
  Config c;
  c.default_timeout_ms = 1234;
  auto m = Make(c);
  auto slot = m->TryAcquire("t", "critic");
  ASSERT_TRUE(slot.ok());
  EXPECT_EQ(slot->deadline_mono_nanos(), 1234 * 1'000'000LL);
  EXPECT_EQ(slot->hard_deadline_mono_nanos(), 1851 * 1'000'000LL);
}

TEST_F(ManagerTest, DoubleReleaseIsHarmlessAndCountsOnce) {
  auto m = Make();
  auto slot = m->TryAcquire("t", "file_read");
  ASSERT_TRUE(slot.ok());
  Slot s = std::move(slot).value();
  EXPECT_TRUE(m->Release(s, true));
  EXPECT_FALSE(m->Release(s, true));
  EXPECT_FALSE(s.Release(false, "again"));
  EXPECT_EQ(m->GetStatistics().total_calls, 1);
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
}

TEST_F(ManagerTest, ReleaseUnlessLateFailsACallAtItsHardDeadlineAndSaysSo) {
  auto m = Make();
  // 1000 ms timeout, escalation factor 1.5: hard deadline at 1500 ms.
  Slot early = m->TryAcquire("early", "file_read", 1000).value();
  Slot late = m->TryAcquire("late", "file_read", 1000).value();
  clock_.AdvanceMs(1499);
  const ReleaseOutcome in_time = early.ReleaseUnlessLate(true, {}, "Late");
  EXPECT_TRUE(in_time.released);
  EXPECT_FALSE(in_time.past_hard_deadline);
  EXPECT_DOUBLE_EQ(in_time.duration_ms, 1499.0);
  clock_.AdvanceMs(1);  // exactly at the hard deadline, as the timer would fire
  const ReleaseOutcome past = late.ReleaseUnlessLate(true, {}, "Late");
  EXPECT_TRUE(past.released);
  EXPECT_TRUE(past.past_hard_deadline);
  EXPECT_DOUBLE_EQ(past.duration_ms, 1500.0);
  EXPECT_FALSE(late.ReleaseUnlessLate(true, {}, "Late").released);

  const auto metrics = m->GetMetrics();
  ASSERT_EQ(metrics.size(), 2u);
  EXPECT_TRUE(metrics[0].success);
  EXPECT_EQ(metrics[0].error_type, "");
  EXPECT_FALSE(metrics[1].success);
  EXPECT_EQ(metrics[1].error_type, "Late");
  EXPECT_TRUE(metrics[1].escalated);
  EXPECT_EQ(m->GetStatistics().failure_count, 1);
}

// ReleaseWithOutcome says what the record says: which deadlines passed (by the clock alone here,
// no timer tick), and the duration; the outcome passed in stands, even past the hard deadline.
TEST_F(ManagerTest, ReleaseWithOutcomeReportsTheDeadlinesTheRecordSaysPassed) {
  auto m = Make();
  // 1000 ms timeout, escalation factor 1.5: hard deadline at 1500 ms.
  Slot quick = m->TryAcquire("quick", "file_read", 1000).value();
  Slot slow = m->TryAcquire("slow", "file_read", 1000).value();
  Slot overrun = m->TryAcquire("overrun", "file_read", 1000).value();
  clock_.AdvanceMs(999);
  const ReleaseOutcome a = quick.ReleaseWithOutcome(true);
  clock_.AdvanceMs(1);
  const ReleaseOutcome b = slow.ReleaseWithOutcome(true);
  clock_.AdvanceMs(500);
  const ReleaseOutcome c = overrun.ReleaseWithOutcome(true);
  EXPECT_TRUE(a.released && b.released && c.released);
  EXPECT_FALSE(a.timeout_reached || a.escalated);
  EXPECT_TRUE(b.timeout_reached);
  EXPECT_FALSE(b.escalated);
  EXPECT_TRUE(c.timeout_reached && c.escalated);
  EXPECT_FALSE(c.past_hard_deadline);  // ReleaseUnlessLate's alone
  EXPECT_DOUBLE_EQ(c.duration_ms, 1500.0);
  EXPECT_FALSE(overrun.ReleaseWithOutcome(true).released);

  const auto metrics = m->GetMetrics();
  ASSERT_EQ(metrics.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const ReleaseOutcome& o = i == 0 ? a : i == 1 ? b : c;
    EXPECT_EQ(metrics[i].timeout_reached, o.timeout_reached) << i;
    EXPECT_EQ(metrics[i].escalated, o.escalated) << i;
    EXPECT_TRUE(metrics[i].success) << i;
  }
}

TEST_F(ManagerTest, DestroyedUnreleasedSlotIsRecordedAsAbandonedFailure) {
  auto m = Make();
  {
    auto slot = m->TryAcquire("lost", "file_write");
    ASSERT_TRUE(slot.ok());
    EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("file_write").active, 1);
  }
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("file_write").active, 0);
  auto metrics = m->GetMetrics();
  ASSERT_EQ(metrics.size(), 1u);
  EXPECT_FALSE(metrics[0].success);
  EXPECT_EQ(metrics[0].error_type, "abandoned");
  EXPECT_EQ(m->GetStatistics().failure_count, 1);
}

TEST_F(ManagerTest, MoveAssigningOverALiveSlotAbandonsIt) {
  auto m = Make();
  Slot a = m->TryAcquire("a", "critic").value();
  Slot b = m->TryAcquire("b", "critic").value();
  a = std::move(b);
  EXPECT_FALSE(b.valid());  // NOLINT(bugprone-use-after-move): checking the moved-from state
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("critic").active, 1);
  ASSERT_EQ(m->GetMetrics().size(), 1u);
  EXPECT_EQ(m->GetMetrics()[0].task_id, "a");
  EXPECT_EQ(m->GetMetrics()[0].error_type, "abandoned");
  EXPECT_TRUE(a.Release(true));
  EXPECT_EQ(m->GetMetrics()[1].task_id, "b");
}

TEST_F(ManagerTest, ReleaseThroughTheWrongManagerIsRefused) {
  auto m1 = Make();
  auto m2 = Make();
  Slot s = m1->TryAcquire("t", "critic").value();
  EXPECT_FALSE(m2->Release(s, true));
  EXPECT_TRUE(s.valid());
  EXPECT_TRUE(m1->Release(s, true));
}

TEST_F(ManagerTest, SlotOutlivingItsManagerStaysReleasable) {
  auto m = Make();
  Slot s = m->TryAcquire("t", "critic").value();
  m.reset();
  EXPECT_TRUE(s.valid());
  EXPECT_TRUE(s.Release(true));  // frees the orphaned state; ASan checks there is no use after free
}

// ---- concurrency limits and lane independence ---------------------------------------------------

TEST_F(ManagerTest, LaneLimitRejectsWithReasonAndMessage) {
  auto m = Make();
  Slot first = m->TryAcquire("model-1", "forecast_model").value();
  auto second = m->TryAcquire("model-2", "forecast_model");
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().rejection()->reason, RejectReason::kLaneLimit);
  EXPECT_EQ(second.error().message(),
            "lane_limit: lane 'forecast_model' is at its limit (1/1 active)");
  auto stats = m->GetStatistics();
  EXPECT_EQ(stats.rejections_by_reason.at("lane_limit"), 1);
  EXPECT_EQ(stats.lanes.at("forecast_model").rejections, 1);
  EXPECT_EQ(stats.total_rejections, 1);
  auto seen = observer_->seen();
  ASSERT_EQ(seen.back().kind, EventKind::kRejected);
  EXPECT_EQ(seen.back().reason, RejectReason::kLaneLimit);
  EXPECT_THAT(seen.back().message, HasSubstr("forecast_model"));

  first.Release(true);
  EXPECT_TRUE(m->TryAcquire("model-3", "forecast_model").ok());
}

// A refusal is the library's one Error type: a code to switch on, the lane as the field at
// fault, and the Rejection as its payload.
TEST_F(ManagerTest, ARefusalFromTryAcquireIsAnErrorWithItsRejection) {
  auto m = Make();
  Slot first = m->TryAcquire("model-1", "forecast_model").value();
  Result<Slot> second = m->TryAcquire("model-2", "forecast_model");
  ASSERT_FALSE(second.ok());
  const Error& error = second.error();
  EXPECT_EQ(error.code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(error.field(), "lane");
  EXPECT_EQ(error.value(), "forecast_model");
  const Rejection* rejection = error.rejection();
  ASSERT_NE(rejection, nullptr);
  EXPECT_EQ(rejection->reason, RejectReason::kLaneLimit);
  EXPECT_EQ(rejection->lane, "forecast_model");
  EXPECT_EQ(rejection->active, 1);
  EXPECT_EQ(rejection->limit, 1);
  EXPECT_EQ(error.message(), rejection->message());
}

TEST_F(ManagerTest, AnUnknownLaneIsANotFoundError) {
  auto m = Make();
  Result<Slot> r = m->TryAcquire("t", "no_such_lane");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), ErrorCode::kNotFound);
  EXPECT_EQ(r.error().field(), "lane");
  EXPECT_EQ(r.error().value(), "no_such_lane");
  ASSERT_NE(r.error().rejection(), nullptr);
  EXPECT_EQ(r.error().rejection()->reason, RejectReason::kUnknownLane);
}

TEST_F(ManagerTest, GlobalLimitRejectsAcrossLanes) {
  Config c;
  c.global_concurrency_limit = 3;
  c.lane_concurrency_limits = {{"a", 2}, {"b", 2}};
  auto m = Make(c);
  std::vector<Slot> held;
  held.push_back(m->TryAcquire("1", "a").value());
  held.push_back(m->TryAcquire("2", "a").value());
  held.push_back(m->TryAcquire("3", "b").value());
  auto r = m->TryAcquire("4", "b");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rejection()->reason, RejectReason::kGlobalLimit);
  EXPECT_THAT(r.error().message(), HasSubstr("global concurrency is at its limit (3/3 active)"));
  EXPECT_EQ(m->GetStatistics().rejections_by_reason.at("global_limit"), 1);
}

TEST_F(ManagerTest, LanesAreIndependent) {
  auto m = Make();
  std::vector<Slot> writes;
  for (int i = 0; i < 4; ++i) writes.push_back(m->TryAcquire("w", "file_write").value());
  EXPECT_FALSE(m->TryAcquire("w", "file_write").ok());
  for (int i = 0; i < 16; ++i) EXPECT_TRUE(m->TryAcquire("r", "file_read").ok()) << i;
  std::vector<Slot> tools;
  for (int i = 0; i < 8; ++i) tools.push_back(m->TryAcquire("t", "tool_call").value());
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("tool_call").active, 8);
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("file_write").active, 4);
}

TEST_F(ManagerTest, CustomLanesWork) {
  Config c;
  c.lane_concurrency_limits["custom_lane"] = 5;
  auto m = Make(c);
  std::vector<Slot> held;
  for (int i = 0; i < 5; ++i) held.push_back(m->TryAcquire("c", "custom_lane").value());
  EXPECT_EQ(m->TryAcquire("c", "custom_lane").error().rejection()->reason,
            RejectReason::kLaneLimit);
  EXPECT_EQ(m->GetConcurrencyStatus().lanes.at("custom_lane").limit, 5);
}

// The invariant: no observer ever sees more granted slots than a lane's or the global limit, under
// threads racing for the same places, and every slot comes back.
// Run with the counts packed in one admission word (3 lanes) and, with 30 idle lanes more (34
// fields of 3 bits do not fit 63), with the lane counts in atomics of their own. Each with one
// admission shard (a 1-CPU machine) and with 64 (a big host), whatever this machine has.
class ManagerContention : public ::testing::TestWithParam<std::tuple<int, size_t>> {
 protected:
  ManagerContention() : saved_shards_(internal::SetShardCountForTesting(std::get<1>(GetParam()))) {}
  ~ManagerContention() override { internal::SetShardCountForTesting(saved_shards_); }
  static int IdleLanes() { return std::get<0>(GetParam()); }

 private:
  size_t saved_shards_;
};

TEST(AdmissionLayout, PacksTheCountsWhenEveryFieldFits) {
  const internal::AdmissionLayout five_lanes(5, 1023);  // 6 fields of 10 bits
  ASSERT_TRUE(five_lanes.packed());
  // Lane 2 and the global count after two calls in lane 2 and one in lane 0.
  const uint64_t word = 2 * five_lanes.Delta(2) + five_lanes.Delta(0);
  EXPECT_EQ(five_lanes.Global(word), 3);
  EXPECT_EQ(five_lanes.Lane(word, 2), 2);
  EXPECT_EQ(five_lanes.Lane(word, 0), 1);
  EXPECT_EQ(five_lanes.Lane(word, 4), 0);
  // A full field does not spill into its neighbour.
  EXPECT_EQ(five_lanes.Lane(1023 * five_lanes.Delta(4) - 1023, 3), 0);
  EXPECT_FALSE(internal::AdmissionLayout(5, 1024).packed());  // 6 x 11 bits > 63
  EXPECT_FALSE(internal::AdmissionLayout(33, 5).packed());    // 34 x 3 bits > 63
  const internal::AdmissionLayout unpacked(33, 5);
  EXPECT_EQ(unpacked.Delta(7), 1u);
  EXPECT_EQ(unpacked.Global(internal::AdmissionLayout::kOrphaned | 4), 4);
  EXPECT_TRUE(internal::AdmissionLayout::Empty(internal::AdmissionLayout::kOrphaned));
  EXPECT_FALSE(internal::AdmissionLayout::Empty(internal::AdmissionLayout::kOrphaned | 1));
}

INSTANTIATE_TEST_SUITE_P(Layouts, ManagerContention,
                         ::testing::Combine(::testing::Values(0, 30),
                                            ::testing::Values(size_t{1}, size_t{64})),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) == 0 ? "OneWord"
                                                                           : "LaneCountsApart") +
                                  (std::get<1>(info.param) == 1 ? "OneShard" : "64Shards");
                         });

TEST_P(ManagerContention, LaneAndGlobalLimitsHoldUnderManyThreads) {
  Config c;
  // What is tested is the counts; the process's RSS (large after many tests in one sanitized
  // process) must not refuse every call with memory_limit.
  c.enable_memory_guards = false;
  c.global_concurrency_limit = 5;
  c.lane_concurrency_limits = {{"hot", 3}, {"warm", 3}, {"cold", 2}};
  for (int i = 0; i < IdleLanes(); ++i) c.lane_concurrency_limits["idle" + std::to_string(i)] = 1;
  ASSERT_EQ(internal::AdmissionLayout(c.lane_concurrency_limits.size(), 5).packed(),
            IdleLanes() == 0);
  ManagerOptions o;
  o.start_background_thread = false;
  auto m = ResourceBudgetManager::Create(c, std::move(o)).value();
  const std::vector<std::string> lanes = {"hot", "warm", "cold"};
  std::map<std::string, std::atomic<int>> live;
  for (const auto& l : lanes) live[l] = 0;
  std::atomic<int> live_global{0};
  std::atomic<int> violations{0}, granted{0}, rejected{0};
  std::atomic<bool> stop{false};

  std::thread checker([&] {
    while (!stop.load()) {
      auto s = m->GetConcurrencyStatus();
      if (s.global.active > 5) ++violations;
      for (const auto& [name, lane] : s.lanes)
        if (lane.active > lane.limit) ++violations;
    }
  });
  std::vector<std::thread> workers;
  for (int t = 0; t < 8; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 20000; ++i) {
        const std::string& lane = lanes[rng() % 3];
        auto r = m->TryAcquire("task", lane);
        if (!r.ok()) {
          ++rejected;
          continue;
        }
        ++granted;
        // Counted after the grant and uncounted before the release: only an over-grant can push
        // these past the limits.
        if (live[lane].fetch_add(1) + 1 > c.lane_concurrency_limits[lane]) ++violations;
        if (live_global.fetch_add(1) + 1 > 5) ++violations;
        if (rng() % 4 == 0) std::this_thread::yield();
        live_global.fetch_sub(1);
        live[lane].fetch_sub(1);
        r->Release(rng() % 2 == 0);
      }
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  checker.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_EQ(granted.load() + rejected.load(), 8 * 20000);
  EXPECT_GT(granted.load(), 0);
  auto stats = m->GetStatistics();
  EXPECT_EQ(stats.total_calls, granted.load());
  EXPECT_EQ(stats.total_rejections, rejected.load());
  EXPECT_LE(stats.max_concurrent_calls, 5);
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
  for (const auto& [name, lane] : m->GetConcurrencyStatus().lanes) EXPECT_EQ(lane.active, 0);
}

// Call ids come from per-shard blocks; threads on different CPUs (and threads that move between
// them) must still never see the same id twice.
class CallIds : public ::testing::TestWithParam<size_t> {
 protected:
  CallIds() : saved_shards_(internal::SetShardCountForTesting(GetParam())) {}
  ~CallIds() override { internal::SetShardCountForTesting(saved_shards_); }

 private:
  size_t saved_shards_;
};
INSTANTIATE_TEST_SUITE_P(Shards, CallIds, ::testing::Values(size_t{1}, size_t{2}, size_t{64}));

TEST_P(CallIds, StayUniqueAcrossThreadsAndShards) {
  ManagerOptions o;
  o.start_background_thread = false;
  Config c;
  c.enable_memory_guards = false;  // as above: the ids are tested, not the memory guard
  auto m = ResourceBudgetManager::Create(c, std::move(o)).value();
  constexpr int kThreads = 4, kRounds = 50, kHeld = 8;
  std::vector<std::vector<uint64_t>> ids(kThreads);
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        std::vector<Slot> held;
        for (int i = 0; i < kHeld; ++i) {
          auto r = m->TryAcquire("task", "tool_call");
          if (r.ok()) held.push_back(std::move(r).value());
        }
        for (Slot& s : held) ids[t].push_back(s.call_id());
        if (round % 8 == 0) std::this_thread::yield();  // invites a move to the other CPU
      }
    });
  }
  for (auto& w : workers) w.join();
  std::set<uint64_t> all;
  size_t total = 0;
  for (const auto& v : ids) {
    total += v.size();
    all.insert(v.begin(), v.end());
  }
  EXPECT_GT(total, 0u);
  EXPECT_EQ(all.size(), total);
  EXPECT_GE(*all.begin(), 1u);
  std::set<std::string> recorded;
  for (const auto& record : m->GetMetrics()) recorded.insert(record.call_id);
  EXPECT_EQ(recorded.size(), m->GetMetrics().size());
}

// ---- rejections for bad requests and shutdown
// ----------------------------------------------------

TEST_F(ManagerTest, UnknownLaneIsRejected) {
  auto m = Make();
  auto r = m->TryAcquire("t", "no_such_lane");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rejection()->reason, RejectReason::kUnknownLane);
  EXPECT_THAT(r.error().message(), HasSubstr("'no_such_lane'"));
  EXPECT_EQ(m->GetStatistics().rejections_by_reason.at("unknown_lane"), 1);
}

// FindLane compares a name's length and first and last 8 bytes, and the rest only past 16 bytes:
// every length around those edges, with one byte changed at every position, must miss.
TEST_F(ManagerTest, LaneLookupTellsApartNamesDifferingInOneByteAnywhere) {
  Config c;
  c.lane_concurrency_limits.clear();
  for (size_t len = 1; len <= 40; ++len) c.lane_concurrency_limits[std::string(len, 'a')] = 1;
  auto m = Make(c);
  for (size_t len = 1; len <= 40; ++len) {
    const std::string name(len, 'a');
    for (size_t at = 0; at < len; ++at) {
      std::string near = name;
      near[at] = 'b';
      auto r = m->TryAcquire("t", near);
      ASSERT_FALSE(r.ok()) << near;
      EXPECT_EQ(r.error().rejection()->reason, RejectReason::kUnknownLane) << near;
    }
    Slot slot = m->TryAcquire("t", name).value();
    EXPECT_EQ(m->GetConcurrencyStatus().lanes.at(name).active, 1) << name;
    EXPECT_EQ(m->GetConcurrencyStatus().global.active, 1) << name;
  }
}

TEST_F(ManagerTest, NonPositiveTimeoutIsRejected) {
  auto m = Make();
  for (int64_t t : {int64_t{0}, int64_t{-5}, kMaxTimeoutMs + 1}) {
    auto r = m->TryAcquire("t", "critic", t);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().rejection()->reason, RejectReason::kInvalidTimeout);
    EXPECT_THAT(r.error().message(), HasSubstr("got " + std::to_string(t)));
  }
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
}

TEST_F(ManagerTest, ShutdownRejectsNewCallsAndKeepsOutstandingSlotsReleasable) {
  auto m = Make();
  Slot s = m->TryAcquire("t", "critic").value();
  m->Shutdown();
  m->Shutdown();  // idempotent
  auto r = m->TryAcquire("t", "critic");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rejection()->reason, RejectReason::kShuttingDown);
  EXPECT_TRUE(s.Release(true));
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
}

TEST_F(ManagerTest, ThrowingObserverDoesNotBreakCalls) {
  struct Thrower : Observer {
    void OnEvent(const CallEvent&) override { throw std::runtime_error("broken exporter"); }
  };
  auto m = Make();
  m->AddObserver(std::make_shared<Thrower>());
  auto s = m->TryAcquire("t", "critic");
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->Release(true));
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
  EXPECT_EQ(observer_->kinds().size(), 2u);  // the other observer still saw both events
}

TEST_F(ManagerTest, InvalidConfigIsRefusedAtCreate) {
  Config c;
  c.timeout_escalation_factor = 0.5;
  auto m = ResourceBudgetManager::Create(c);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().field(), "timeoutEscalationFactor");
}

// ---- memory guards ------------------------------------------------------------------------------

TEST_F(ManagerTest, RssAboveLimitRejectsWithMemoryLimit) {
  figures_->rss = 600;  // above the default maxRssMb of 512
  auto m = Make();
  auto r = m->TryAcquire("t", "tool_call");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rejection()->reason, RejectReason::kMemoryLimit);
  EXPECT_THAT(r.error().message(), HasSubstr("maxRssMb"));

  figures_->rss = 300;
  EXPECT_FALSE(m->TryAcquire("t", "tool_call").ok()) << "no resample yet: the guard uses the cache";
  clock_.AdvanceMs(1000);
  m->Tick();
  EXPECT_TRUE(m->TryAcquire("t", "tool_call").ok());
}

TEST_F(ManagerTest, MemoryGuardsOffAdmitsAboveLimits) {
  figures_->rss = 600;
  figures_->heap = 450;
  Config c;
  c.enable_memory_guards = false;
  auto m = Make(c);
  EXPECT_TRUE(m->TryAcquire("t", "tool_call").ok());
  for (const auto& s : observer_->seen()) EXPECT_NE(s.kind, EventKind::kHeapWarning);
}

TEST_F(ManagerTest, HeapAboveWarningAdmitsAndWarnsOncePerSample) {
  figures_->heap = 450;  // above the default heapWarningMb of 400
  auto m = Make();
  Slot a = m->TryAcquire("a", "tool_call").value();
  Slot b = m->TryAcquire("b", "tool_call").value();
  auto count_warnings = [&] {
    int n = 0;
    for (const auto& s : observer_->seen()) n += s.kind == EventKind::kHeapWarning;
    return n;
  };
  EXPECT_EQ(count_warnings(), 1);
  clock_.AdvanceMs(1000);
  m->Tick();
  Slot c = m->TryAcquire("c", "tool_call").value();
  EXPECT_EQ(count_warnings(), 2);
  figures_->heap = 100;
  clock_.AdvanceMs(1000);
  m->Tick();
  Slot d = m->TryAcquire("d", "tool_call").value();
  EXPECT_EQ(count_warnings(), 2);
}

TEST_F(ManagerTest, SnapshotAndPerCallMemoryFigures) {
  auto m = Make();
  auto snap = m->GetMemorySnapshot();
  EXPECT_DOUBLE_EQ(snap.rss_mb, 100);
  EXPECT_DOUBLE_EQ(snap.heap_used_mb, 50);
  EXPECT_EQ(snap.timestamp, "2026-01-01T00:00:00.000Z");
  Slot s = m->TryAcquire("t", "critic").value();
  figures_->rss = 130;
  figures_->heap = 45;
  clock_.AdvanceMs(1000);
  m->Tick();
  EXPECT_EQ(m->GetMemorySnapshot().timestamp, "2026-01-01T00:00:01.000Z");
  s.Release(true);
  auto rec = m->GetMetrics().at(0);
  EXPECT_DOUBLE_EQ(rec.rss_start_mb, 100);
  EXPECT_DOUBLE_EQ(rec.rss_end_mb, 130);
  EXPECT_DOUBLE_EQ(rec.rss_delta_mb, 30);
  EXPECT_DOUBLE_EQ(rec.heap_start_mb, 50);
  EXPECT_DOUBLE_EQ(rec.heap_delta_mb, -5);
  EXPECT_DOUBLE_EQ(m->GetStatistics().average_rss_delta_mb, 30);
}

// ---- timeouts
// -------------------------------------------------------------------------------------

// A TimeoutHandler made of two callbacks; either may be empty.
class CallbackHandler final : public TimeoutHandler {
 public:
  void OnWarning() override {
    if (on_warning) on_warning();
  }
  void OnEscalation() override {
    if (on_escalation) on_escalation();
  }
  std::function<void()> on_warning, on_escalation;
};

TEST_F(ManagerTest, TwoPhaseTimeoutWarnsAtTAndEscalatesAtFactorT) {
  auto m = Make();  // escalation factor 1.5
  Slot s = m->TryAcquire("slow", "tool_call", 1000).value();
  std::stop_token token = s.stop_token();
  std::atomic<int> escalation_runs{0}, warning_runs{0};
  CallbackHandler handler;
  handler.on_escalation = [&] {
    EXPECT_EQ(observer_->kinds().size(), 2u) << "observers hear of the escalation first";
    ++escalation_runs;
  };
  handler.on_warning = [&] {
    EXPECT_TRUE(token.stop_requested()) << "the warning handler runs after the stop request";
    EXPECT_THAT(observer_->kinds(), ElementsAre(EventKind::kTimeoutWarning))
        << "observers hear of the warning first";
    ++warning_runs;
  };
  s.SetTimeoutHandler(&handler);
  EXPECT_EQ(s.global_active_at_start(), 1);
  EXPECT_EQ(s.lane_active_at_start(), 1);
  observer_->clear();

  clock_.AdvanceMs(999);
  m->Tick();
  EXPECT_TRUE(observer_->kinds().empty());
  EXPECT_FALSE(token.stop_requested());

  clock_.AdvanceMs(1);
  m->Tick();
  EXPECT_THAT(observer_->kinds(), ElementsAre(EventKind::kTimeoutWarning));
  EXPECT_TRUE(token.stop_requested());
  EXPECT_EQ(warning_runs.load(), 1);
  EXPECT_EQ(escalation_runs.load(), 0);
  EXPECT_EQ(m->GetConcurrencyStatus().global.overrunning, 0);

  clock_.AdvanceMs(499);
  m->Tick();
  EXPECT_EQ(observer_->kinds().size(), 1u);

  clock_.AdvanceMs(1);
  m->Tick();
  EXPECT_THAT(observer_->kinds(),
              ElementsAre(EventKind::kTimeoutWarning, EventKind::kTimeoutEscalation));
  EXPECT_EQ(escalation_runs.load(), 1);
  // Still counted: the work may still be running.
  auto status = m->GetConcurrencyStatus();
  EXPECT_EQ(status.global.active, 1);
  EXPECT_EQ(status.global.overrunning, 1);
  EXPECT_EQ(status.lanes.at("tool_call").overrunning, 1);
  EXPECT_EQ(m->GetStatistics().overrunning_calls, 1);

  clock_.AdvanceMs(10000);
  m->Tick();
  EXPECT_EQ(observer_->kinds().size(), 2u) << "each phase fires once";
  EXPECT_EQ(escalation_runs.load(), 1);
  EXPECT_EQ(warning_runs.load(), 1);

  s.Release(false, "timeout");
  status = m->GetConcurrencyStatus();
  EXPECT_EQ(status.global.active, 0);
  EXPECT_EQ(status.global.overrunning, 0);
  auto rec = m->GetMetrics().at(0);
  EXPECT_TRUE(rec.timeout_reached);
  EXPECT_TRUE(rec.escalated);
  auto stats = m->GetStatistics();
  EXPECT_EQ(stats.timeout_count, 1);
  EXPECT_EQ(stats.escalation_count, 1);
  EXPECT_EQ(stats.overrunning_calls, 0);
}

TEST_F(ManagerTest, NothingFiresAfterRelease) {
  auto m = Make();
  Slot s = m->TryAcquire("quick", "critic", 1000).value();
  bool handler_ran = false;
  CallbackHandler handler;
  handler.on_warning = handler.on_escalation = [&] { handler_ran = true; };
  s.SetTimeoutHandler(&handler);
  clock_.AdvanceMs(500);
  s.Release(true);
  observer_->clear();
  clock_.AdvanceMs(5000);
  m->Tick();
  EXPECT_TRUE(observer_->kinds().empty());
  EXPECT_FALSE(handler_ran);
  EXPECT_FALSE(m->GetMetrics().at(0).timeout_reached);
}

TEST_F(ManagerTest, StopTokenTakenAfterTheWarningIsAlreadyStopped) {
  auto m = Make();
  Slot s = m->TryAcquire("t", "critic", 100).value();
  clock_.AdvanceMs(100);
  m->Tick();
  EXPECT_TRUE(s.stop_token().stop_requested());
}

TEST_F(ManagerTest, EscalationFactorOneFiresBothPhasesInOneTick) {
  Config c;
  c.timeout_escalation_factor = 1.0;
  auto m = Make(c);
  Slot s = m->TryAcquire("t", "critic", 100).value();
  observer_->clear();
  clock_.AdvanceMs(100);
  m->Tick();
  EXPECT_THAT(observer_->kinds(),
              ElementsAre(EventKind::kTimeoutWarning, EventKind::kTimeoutEscalation));
}

TEST_F(ManagerTest, TenThousandArmedTimersFireOnceEachInDeadlineOrder) {
  Config c;
  c.global_concurrency_limit = 10000;
  c.lane_concurrency_limits = {{"bulk", 10000}};
  c.metrics_capacity = 10000;
  auto m = Make(c);
  std::vector<Slot> slots;
  std::mt19937 rng(7);
  std::map<uint64_t, int64_t> timeout_of;
  for (int i = 0; i < 10000; ++i) {
    const int64_t timeout = 1 + static_cast<int64_t>(rng() % 5000);
    slots.push_back(m->TryAcquire("t", "bulk", timeout).value());
    timeout_of[slots.back().call_id()] = timeout;
  }
  observer_->clear();
  // Release every other call before anything fires: their timers must stay silent. (By id, not
  // by parity: ids come from per-shard blocks, so a thread that changes CPU skips ahead.)
  std::set<uint64_t> released;
  for (size_t i = 0; i < slots.size(); i += 2) {
    released.insert(slots[i].call_id());
    slots[i].Release(true);
  }
  for (int step = 0; step < 5000; step += 7) {
    clock_.AdvanceMs(7);
    m->Tick();
  }
  clock_.AdvanceMs(5000);
  m->Tick();
  std::map<uint64_t, int> warnings, escalations;
  int64_t last_tick = 0;
  for (const auto& e : observer_->seen()) {
    if (e.kind == EventKind::kTimeoutWarning) {
      ++warnings[e.call_id];
      // A warning fires at the first 7 ms tick at or after its deadline, and ticks fire in order.
      const int64_t tick = (timeout_of[e.call_id] + 6) / 7;
      EXPECT_GE(tick, last_tick) << e.call_id;
      last_tick = tick;
    } else if (e.kind == EventKind::kTimeoutEscalation) {
      ++escalations[e.call_id];
    }
  }
  EXPECT_EQ(warnings.size(), 5000u);
  EXPECT_EQ(escalations.size(), 5000u);
  for (const auto& [id, n] : warnings) {
    EXPECT_EQ(n, 1);
    EXPECT_EQ(released.count(id), 0u) << "released call " << id << " fired";
  }
  EXPECT_EQ(m->GetConcurrencyStatus().global.overrunning, 5000);
  for (auto& s : slots) s.Release(false, "timeout");
  EXPECT_EQ(m->GetConcurrencyStatus().global.overrunning, 0);
}

// Ticks on another thread until the callback `install` installs runs there, then releases `s`:
// Release must not return before the callback does.
void ExpectReleaseWaitsForTheTimerThread(
    ResourceBudgetManager& m, ManualClock& clock, Slot& s, int64_t advance_ms,
    const std::function<void(std::function<void()>)>& install) {
  std::atomic<bool> started{false}, release_started{false}, done{false};
  install([&] {
    started = true;
    while (!release_started) std::this_thread::yield();
    // Give a non-waiting Release every chance to finish first.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    done = true;
  });
  clock.AdvanceMs(advance_ms);
  std::thread timer_thread([&] { m.Tick(); });
  while (!started) std::this_thread::yield();
  release_started = true;
  s.Release(false, "timeout");
  EXPECT_TRUE(done.load()) << "Release returned while the callback was still running";
  timer_thread.join();
}

TEST_F(ManagerTest, ReleaseWaitsForARunningEscalationHandler) {
  auto m = Make();
  CallbackHandler handler;
  Slot s = m->TryAcquire("t", "critic", 10).value();
  ExpectReleaseWaitsForTheTimerThread(*m, clock_, s, 15, [&](std::function<void()> on_escalation) {
    handler.on_escalation = std::move(on_escalation);
    s.SetTimeoutHandler(&handler);
  });
}

class RecordingListener final : public TimeoutHandler {
 public:
  void OnWarning() override {
    std::lock_guard<std::mutex> lock(mu);
    heard.push_back("warning");
  }
  void OnEscalation() override {
    std::lock_guard<std::mutex> lock(mu);
    heard.push_back("hard");
    if (on_hard) on_hard();
  }
  std::vector<std::string> Heard() {
    std::lock_guard<std::mutex> lock(mu);
    return heard;
  }
  std::function<void()> on_hard;
  std::mutex mu;
  std::vector<std::string> heard;
};

// The handler hears both phases, in order, each once; a released call's entry does not carry it
// into the next call, and a removed handler hears nothing.
TEST_F(ManagerTest, ATimeoutHandlerHearsBothPhasesInOrder) {
  auto m = Make();  // escalation factor 1.5
  RecordingListener listener;
  Slot s = m->TryAcquire("slow", "tool_call", 1000).value();
  s.SetTimeoutHandler(&listener);
  clock_.AdvanceMs(1000);
  m->Tick();
  EXPECT_THAT(listener.Heard(), ElementsAre("warning"));
  clock_.AdvanceMs(500);
  m->Tick();
  EXPECT_THAT(listener.Heard(), ElementsAre("warning", "hard"));
  clock_.AdvanceMs(5000);
  m->Tick();
  EXPECT_THAT(listener.Heard(), ElementsAre("warning", "hard"));
  s.Release(false, "timeout");

  Slot reused = m->TryAcquire("reused", "tool_call", 10).value();  // s's entry, from the free list
  RecordingListener removed;
  Slot t = m->TryAcquire("removed", "tool_call", 10).value();
  t.SetTimeoutHandler(&removed);
  t.SetTimeoutHandler(nullptr);
  clock_.AdvanceMs(100);
  m->Tick();
  EXPECT_TRUE(removed.Heard().empty());
  EXPECT_THAT(listener.Heard(), ::testing::SizeIs(2));
}

TEST_F(ManagerTest, ReleaseWaitsForARunningTimeoutListener) {
  auto m = Make();
  Slot s = m->TryAcquire("t", "critic", 10).value();
  RecordingListener listener;
  ExpectReleaseWaitsForTheTimerThread(*m, clock_, s, 15, [&](std::function<void()> on_hard) {
    listener.on_hard = std::move(on_hard);
    s.SetTimeoutHandler(&listener);
  });
}

TEST_F(ManagerTest, ReleaseWaitsForTheEscalationHandlerWhenBothPhasesFireInOneTick) {
  Config c;
  c.timeout_escalation_factor = 1.0;
  auto m = Make(c);
  CallbackHandler handler;
  handler.on_warning = [] {};
  Slot s = m->TryAcquire("t", "critic", 10).value();
  ExpectReleaseWaitsForTheTimerThread(*m, clock_, s, 10, [&](std::function<void()> on_escalation) {
    handler.on_escalation = std::move(on_escalation);
    s.SetTimeoutHandler(&handler);
  });
}

// A handler that throws is ignored: the timer thread goes on, the call stays counted, its next
// phase still fires and other calls' handlers still run.
TEST_F(ManagerTest, AThrowingHandlerDoesNotStopTheTimers) {
  auto m = Make();  // escalation factor 1.5
  CallbackHandler thrower, other;
  int escalations = 0, other_warnings = 0;
  thrower.on_warning = [] { throw std::runtime_error("broken handler"); };
  thrower.on_escalation = [&] {
    ++escalations;
    throw std::runtime_error("broken again");
  };
  other.on_warning = [&] { ++other_warnings; };
  Slot a = m->TryAcquire("a", "critic", 100).value();
  Slot b = m->TryAcquire("b", "critic", 100).value();
  a.SetTimeoutHandler(&thrower);
  b.SetTimeoutHandler(&other);
  clock_.AdvanceMs(100);
  EXPECT_NO_THROW(m->Tick());
  EXPECT_EQ(other_warnings, 1);
  clock_.AdvanceMs(50);
  EXPECT_NO_THROW(m->Tick());
  EXPECT_EQ(escalations, 1);
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 2);
  EXPECT_EQ(m->GetConcurrencyStatus().global.overrunning, 2);
  EXPECT_TRUE(a.Release(false, "timeout")) << "a throwing handler leaves no pending mark behind";
  EXPECT_TRUE(b.Release(false, "timeout"));
}

// An observer on the timer thread releases another call whose handler is queued in the same tick:
// that handler must not run, and the reused entry must not keep the call's pending mark.
TEST_F(ManagerTest, ObserverReleasingACallWithAQueuedHandlerSkipsItAndLeavesTheEntryClean) {
  auto m = Make();
  CallbackHandler b_handler, noop;
  Slot a = m->TryAcquire("a", "critic", 10).value();
  Slot b = m->TryAcquire("b", "critic", 10).value();
  bool b_handler_ran = false;
  b_handler.on_warning = [&] { b_handler_ran = true; };
  b.SetTimeoutHandler(&b_handler);
  struct ReleaseB : Observer {
    Slot* b;
    uint64_t a_id;
    void OnEvent(const CallEvent& e) override {
      if (e.kind == EventKind::kTimeoutWarning && e.call_id == a_id) b->Release(false, "early");
    }
  };
  auto observer = std::make_shared<ReleaseB>();
  observer->b = &b;
  observer->a_id = a.call_id();
  m->AddObserver(observer);
  clock_.AdvanceMs(10);
  m->Tick();
  EXPECT_FALSE(b.valid());
  EXPECT_FALSE(b_handler_ran);
  // The entry b used is reused; a hang here would mean a stale pending-handler mark.
  for (int i = 0; i < 4; ++i) {
    Slot again = m->TryAcquire("again", "critic").value();
    (void)again.stop_token();
    again.SetTimeoutHandler(&noop);
    EXPECT_TRUE(again.Release(true));
  }
  EXPECT_TRUE(a.Release(true));
}

TEST_F(ManagerTest, DeadlinesPassedBeforeAnyTickStillCountAsReached) {
  auto m = Make();  // no background thread: nothing fires unless Tick() runs
  Slot s = m->TryAcquire("t", "critic", 100).value();
  clock_.AdvanceMs(200);
  s.Release(true);
  auto rec = m->GetMetrics().at(0);
  EXPECT_TRUE(rec.timeout_reached);
  EXPECT_TRUE(rec.escalated);
  EXPECT_EQ(m->GetStatistics().timeout_count, 1);
}

TEST_F(ManagerTest, ConcurrentAddObserverLosesNone) {
  auto m = Make();
  struct Counter : Observer {
    std::atomic<int>* n;
    void OnEvent(const CallEvent&) override { ++*n; }
  };
  std::atomic<int> events{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        auto o = std::make_shared<Counter>();
        o->n = &events;
        m->AddObserver(o);
      }
    });
  for (auto& t : threads) t.join();
  (void)m->TryAcquire("t", "no_such_lane");  // one event, seen by every observer
  EXPECT_EQ(events.load(), 200);
}

// ---- metrics and statistics ---------------------------------------------------------------------

TEST_F(ManagerTest, MetricsRingKeepsTheMostRecentCallsOldestFirst) {
  Config c;
  c.metrics_capacity = 3;
  auto m = Make(c);
  for (int i = 1; i <= 5; ++i) m->TryAcquire("task-" + std::to_string(i), "critic")->Release(true);
  auto metrics = m->GetMetrics();
  ASSERT_EQ(metrics.size(), 3u);
  EXPECT_EQ(metrics[0].task_id, "task-3");
  EXPECT_EQ(metrics[1].task_id, "task-4");
  EXPECT_EQ(metrics[2].task_id, "task-5");
  EXPECT_EQ(m->GetStatistics().total_calls, 5) << "totals cover every call, not just the ring";
}

TEST_F(ManagerTest, ConcurrencyAtStartAndEndAreRecorded) {
  auto m = Make();
  Slot a = m->TryAcquire("a", "critic").value();
  Slot b = m->TryAcquire("b", "tool_call").value();
  Slot c = m->TryAcquire("c", "tool_call").value();
  a.Release(true);
  auto rec = m->GetMetrics().at(0);
  EXPECT_EQ(rec.concurrent_calls_at_start, 1);
  EXPECT_EQ(rec.concurrent_calls_at_end, 3);
  EXPECT_EQ(m->GetStatistics().max_concurrent_calls, 3);
}

TEST_F(ManagerTest, StatisticsAggregateCountsAveragesAndPercentiles) {
  auto m = Make();
  // 100 calls of 1..100 ms; every tenth fails.
  for (int i = 1; i <= 100; ++i) {
    Slot s = m->TryAcquire("t", i % 2 ? "file_read" : "file_write").value();
    clock_.AdvanceMs(i);
    s.Release(i % 10 != 0, i % 10 != 0 ? "" : "IoError");
  }
  (void)m->TryAcquire("t", "nope");
  auto st = m->GetStatistics();
  EXPECT_EQ(st.total_calls, 100);
  EXPECT_EQ(st.success_count, 90);
  EXPECT_EQ(st.failure_count, 10);
  EXPECT_DOUBLE_EQ(st.average_duration_ms, 50.5);
  EXPECT_DOUBLE_EQ(st.p50_duration_ms, 50);
  EXPECT_DOUBLE_EQ(st.p95_duration_ms, 95);
  EXPECT_DOUBLE_EQ(st.p99_duration_ms, 99);
  EXPECT_EQ(st.timeout_count, 0);
  EXPECT_EQ(st.total_rejections, 1);
  EXPECT_EQ(st.rejections_by_reason.size(), static_cast<size_t>(kRejectReasonCount));
  const auto& reads = st.lanes.at("file_read");
  EXPECT_EQ(reads.total_calls, 50);
  EXPECT_DOUBLE_EQ(reads.average_duration_ms, 50);  // the odd numbers 1..99
  EXPECT_EQ(reads.failure_count, 0);
  const auto& writes = st.lanes.at("file_write");
  EXPECT_EQ(writes.failure_count, 10);
  EXPECT_DOUBLE_EQ(writes.p95_duration_ms, 96);
  EXPECT_EQ(writes.limit, 4);
  EXPECT_EQ(st.lanes.at("critic").total_calls, 0);
  auto failed = m->GetMetrics().at(9);
  EXPECT_FALSE(failed.success);
  EXPECT_EQ(failed.error_type, "IoError");
}

// ---- the process-wide default -------------------------------------------------------------------

TEST(DefaultManager, ReturnsOneInstanceAndRefusesAConflictingConfig) {
  auto first = GetResourceBudgetManager();
  ASSERT_TRUE(first.ok());
  auto again = GetResourceBudgetManager();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*first, *again);
  EXPECT_TRUE(GetResourceBudgetManager(Config{}).ok()) << "the same config is fine";
  Config other;
  other.max_rss_mb = 1024;
  auto conflict = GetResourceBudgetManager(other);
  ASSERT_FALSE(conflict.ok());
  EXPECT_THAT(conflict.error().message(), HasSubstr("different config"));
  auto bad = GetResourceBudgetManagerFromJson(R"({"maxRssMb": "lots"})");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().field(), "maxRssMb");
  auto slot = (*first)->TryAcquire("t", "tool_call");
  ASSERT_TRUE(slot.ok());
  EXPECT_TRUE(slot->Release(true));
}

// The background thread drives timers on the real clock.
// A call's timer enters the heap on the first tick it lives through (or when 256 calls wait),
// while other threads acquire and release in the same shards and ticks run on their own thread.
// Each held call must warn and escalate exactly once; no call warns twice; a call the timer
// warned is recorded as having reached its timeout.
TEST_F(ManagerTest, TimersFireOnceEachWhileCallsChurnAndTicksRunConcurrently) {
  auto m = Make();
  constexpr int kWorkers = 3;
  std::atomic<bool> stop{false};
  std::atomic<int> held_warnings{0};
  std::atomic<int> handlers_set{0};
  std::thread ticker([&] {
    // The clock stands still until every held call has its handler: a handler set after its warning
    // fired would (by design) never run.
    while (handlers_set.load() < kWorkers) std::this_thread::yield();
    while (!stop.load()) {
      clock_.AdvanceMs(3);
      m->Tick();
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> workers;
  std::atomic<int> granted{0};
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      CallbackHandler handler;
      handler.on_warning = [&] { held_warnings.fetch_add(1); };
      Slot held = m->TryAcquire("held-" + std::to_string(w), "file_read", 5).value();
      held.SetTimeoutHandler(&handler);
      handlers_set.fetch_add(1);
      std::mt19937 rng(w);
      for (int i = 0; i < 1000; ++i) {
        auto r = m->TryAcquire("churn", "file_read", 1 + static_cast<int64_t>(rng() % 10));
        if (!r.ok()) continue;
        ++granted;
        for (unsigned y = rng() % 3; y > 0; --y) std::this_thread::yield();
        r->Release(true);
      }
      // Held until its hard deadline has surely passed (the ticker keeps advancing the clock).
      const int64_t until = held.hard_deadline_mono_nanos();
      while (clock_.MonotonicNanos() <= until + 10'000'000) std::this_thread::yield();
      held.Release(false, "done");
    });
  }
  for (auto& t : workers) t.join();
  stop = true;
  ticker.join();

  std::map<uint64_t, int> warnings, escalations;
  std::set<uint64_t> held_ids;
  int timeouts_recorded = 0;
  for (const auto& e : observer_->seen()) {
    if (e.kind == EventKind::kTimeoutWarning) ++warnings[e.call_id];
    if (e.kind == EventKind::kTimeoutEscalation) ++escalations[e.call_id];
    if (e.kind == EventKind::kAcquired && e.task_id.rfind("held-", 0) == 0)
      held_ids.insert(e.call_id);
    if (e.kind == EventKind::kReleased && e.record->timeout_reached) ++timeouts_recorded;
  }
  for (const auto& [id, n] : warnings) EXPECT_EQ(n, 1) << "call " << id;
  for (const auto& [id, n] : escalations) EXPECT_EQ(n, 1) << "call " << id;
  ASSERT_EQ(held_ids.size(), static_cast<size_t>(kWorkers));
  for (uint64_t id : held_ids) {
    EXPECT_EQ(warnings[id], 1) << "held call " << id;
    EXPECT_EQ(escalations[id], 1) << "held call " << id;
  }
  EXPECT_EQ(held_warnings.load(), kWorkers);
  EXPECT_GE(timeouts_recorded, static_cast<int>(warnings.size()));
  EXPECT_EQ(m->GetStatistics().total_calls, granted.load() + kWorkers);
  EXPECT_EQ(m->GetConcurrencyStatus().global.active, 0);
}

TEST(BackgroundThread, FiresTimeoutsWithoutTicks) {
  Config c;
  c.timer_tick_ms = 1;
  auto m = ResourceBudgetManager::Create(c).value();
  Slot s = m->TryAcquire("t", "critic", 5).value();
  std::stop_token token = s.stop_token();
  for (int i = 0; i < 5000 && !token.stop_requested(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_TRUE(token.stop_requested());
  s.Release(false, "timeout");
  EXPECT_TRUE(m->GetMetrics().at(0).timeout_reached);
}

}  // namespace
}  // namespace laneguard
