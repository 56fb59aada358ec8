// The admission fast path, and a worker call whose span records into the batch processor, allocate
// nothing once warm (short task id, no metadata, no observers).
// Its own executable: it replaces the global operator new to count allocations, which must not
// affect the other tests.
#include <gtest/gtest.h>
#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "laneguard/manager.h"
#include "laneguard/worker.h"

namespace {
std::atomic<uint64_t> g_allocations{0};
std::atomic<bool> g_fail_allocations{false};
}  // namespace

void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (g_fail_allocations.load(std::memory_order_relaxed)) throw std::bad_alloc();
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace laneguard {
namespace {

// No background thread: timers fire only in Tick(), on `clock`.
std::unique_ptr<ResourceBudgetManager> MakeManager(ManualClock& clock) {
  ManagerOptions options;
  options.clock = &clock;
  options.start_background_thread = false;
  return ResourceBudgetManager::Create(Config{}, std::move(options)).value();
}

TEST(FastPath, WarmAcquireReleaseAndRejectionAllocateNothing) {
  ManualClock clock;
  auto manager = MakeManager(clock);
  // Warm up: the call table, the timer heap and the metrics ring grow to their working size (two
  // calls at once: the held one and the one in the loop; a call's timer is armed by the first
  // Tick() it lives through), and this thread's first rejection gives it its rejection counters.
  Slot held = manager->TryAcquire("holder", "forecast_model").value();
  for (int i = 0; i < 64; ++i) manager->TryAcquire("task-1234", "tool_call")->Release(true);
  ASSERT_FALSE(manager->TryAcquire("task-1234", "forecast_model").ok());
  manager->Tick();

  const uint64_t before = g_allocations.load();
  for (int i = 0; i < 1000; ++i) {
    auto slot = manager->TryAcquire("task-1234", "tool_call");
    ASSERT_TRUE(slot.ok());
    clock.AdvanceMs(1);
    slot->Release(i % 3 != 0, i % 3 != 0 ? "" : "Timeout");  // short error type: SSO
    auto rejected = manager->TryAcquire("task-1234", "forecast_model");
    ASSERT_FALSE(rejected.ok());
  }
  EXPECT_EQ(g_allocations.load() - before, 0u);

  // The check above must be able to fail: a long task id does allocate.
  const uint64_t before_long = g_allocations.load();
  manager->TryAcquire("a-task-id-longer-than-the-small-string-buffer", "tool_call")->Release(true);
  EXPECT_GT(g_allocations.load() - before_long, 0u);
}

// Metadata is copied into the call; when that copy cannot allocate, TryAcquire throws and takes
// nothing: no count, no entry, no timer left armed for a call that does not exist.
TEST(FastPath, AMetadataCopyThatCannotAllocateTakesNothing) {
  ManualClock clock;
  auto manager = MakeManager(clock);
  const Metadata metadata = {{"userId", "a-user-id-too-long-for-the-small-string-buffer"}};
  // One CPU, so the failing call uses the shard the warm-up filled: the copy of the metadata is
  // then the only allocation left to fail.
  cpu_set_t all, one;
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  manager->TryAcquire("warm-up", "tool_call")->Release(true);
  g_fail_allocations = true;
  bool threw = false;
  try {
    auto never = manager->TryAcquire("task-1", "tool_call", 1000, metadata);
  } catch (const std::bad_alloc&) {
    threw = true;
  }
  g_fail_allocations = false;
  sched_setaffinity(0, sizeof all, &all);
  EXPECT_TRUE(threw);
  EXPECT_EQ(manager->GetConcurrencyStatus().global.active, 0);
  EXPECT_EQ(manager->GetConcurrencyStatus().lanes.at("tool_call").active, 0);

  // Past both deadlines of the failed call nothing fires, and the next call starts clean.
  manager->Tick();
  clock.AdvanceMs(2000);
  manager->Tick();
  EXPECT_EQ(manager->GetConcurrencyStatus().global.overrunning, 0);
  auto slot = manager->TryAcquire("task-2", "tool_call", 1000, metadata);
  ASSERT_TRUE(slot.ok());
  EXPECT_TRUE(slot->Release(true));
  const auto records = manager->GetMetrics();
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(records[1].task_id, "task-2");
  EXPECT_FALSE(records[1].timeout_reached);
}

// A recording span goes to the batch processor as its record, copied into the queue: no SpanData
// is built or allocated on the calling thread. (Handed over as SpanData, through OnEnd, every span
// would allocate.) The queue holds every span of a round, so the export thread, which builds the
// SpanData, runs only at the flushes, outside the counted loop.
TEST(FastPath, WarmRecordingCallsIntoTheBatchProcessorAllocateNothing) {
  class Discard final : public SpanExporter {
   public:
    bool Export(const std::vector<SpanData>&, const Resource&) override { return true; }
  };
  ManualClock clock;
  auto manager = MakeManager(clock);
  constexpr int kRound = 500;
  auto processor = std::make_shared<BatchSpanProcessor>(
      std::make_unique<Discard>(),
      BatchSpanProcessorOptions{.max_queue_size = 4096,
                                .max_export_batch_size = 4096,
                                .schedule_delay = std::chrono::hours(24)});
  TracerOptions o;
  o.processor = processor;
  o.clock = &clock;
  Tracer tracer(std::move(o));
  WorkerCalls calls(*manager, tracer);
  // Warm-up: the queue's two vectors, the span pool and the export thread's spans grow to size.
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kRound; ++i) calls.Call("task-1234", [] {});
    ASSERT_TRUE(processor->ForceFlush());
  }
  const uint64_t before = g_allocations.load();
  for (int i = 0; i < kRound; ++i) calls.Call("task-1234", [] {});
  const uint64_t allocated = g_allocations.load() - before;
  ASSERT_TRUE(processor->ForceFlush());
  EXPECT_EQ(allocated, 0u);
  EXPECT_EQ(processor->stats().exported, 4u * kRound);
}

}  // namespace
}  // namespace laneguard
