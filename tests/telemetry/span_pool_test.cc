#include "telemetry/span_pool.h"

#include <gtest/gtest.h>

#include <future>
#include <string>
#include <thread>
#include <vector>

#include "telemetry/batch_worker.h"

namespace laneguard::internal {
namespace {

SpanData SmallSpan() {
  SpanData span;
  span.name = "worker_call:tool_call";
  span.attributes.push_back({"taskId", std::string("t-1")});
  span.events.push_back({"acquired_slot", 1, {{"globalConcurrency", int64_t{1}}}, 0});
  return span;
}

// Each test runs on a fresh thread, so the calling thread's cache starts empty.
template <typename Fn>
void OnNewThread(Fn fn) {
  std::thread(fn).join();
}

TEST(SpanPoolTest, RecycledBuffersComeBackWithTheirCapacity) {
  OnNewThread([] {
    std::vector<SpanData> batch;
    for (int i = 0; i < 64; ++i) batch.push_back(SmallSpan());
    const size_t before = PooledSpanCount();
    RecycleSpanData(batch);
    EXPECT_TRUE(batch.empty());
    EXPECT_EQ(PooledSpanCount(), std::min(before + 64, kMaxPooledSpans));
    SpanData taken;
    TakeSpanData(taken);
    EXPECT_GE(taken.name.capacity(), std::string("worker_call:tool_call").size());
    EXPECT_GE(taken.events.capacity(), 1u);
  });
}

TEST(SpanPoolTest, LargeSpansAreFreedNotPooled) {
  OnNewThread([] {
    std::vector<SpanData> batch;
    SpanData huge = SmallSpan();
    huge.attributes[0].value = std::string(64 * 1024, 'x');
    batch.push_back(std::move(huge));
    SpanData many = SmallSpan();
    for (int i = 0; i < 100; ++i) many.events.push_back({"e", 0, {}, 0});
    batch.push_back(std::move(many));
    const size_t before = PooledSpanCount();
    RecycleSpanData(batch);
    EXPECT_TRUE(batch.empty());
    EXPECT_EQ(PooledSpanCount(), before);
  });
}

TEST(SpanPoolTest, ThePoolIsBounded) {
  OnNewThread([] {
    for (int round = 0; round < 3; ++round) {
      std::vector<SpanData> batch(kMaxPooledSpans, SmallSpan());
      RecycleSpanData(batch);
      EXPECT_TRUE(batch.empty());
    }
    EXPECT_EQ(PooledSpanCount(), kMaxPooledSpans);
  });
}

TEST(SpanPoolTest, TakingFromAnEmptyCacheAndPoolGivesAnEmptySpan) {
  OnNewThread([] {
    // Drain what other tests left, then one more.
    SpanData span;
    for (size_t i = 0; i <= kMaxPooledSpans + 64; ++i) {
      span = SpanData{};
      TakeSpanData(span);
    }
    EXPECT_EQ(PooledSpanCount(), 0u);
    span = SpanData{};
    TakeSpanData(span);
    EXPECT_TRUE(span.name.empty());
    EXPECT_TRUE(span.attributes.empty());
    EXPECT_TRUE(span.events.empty());
  });
}

// The batch processor gives a span it drops back to the pool; that relies on Push leaving a
// dropped item untouched.
TEST(BatchWorkerTest, ADroppedItemIsLeftToTheCaller) {
  std::promise<void> exporting, release;
  std::shared_future<void> released = release.get_future().share();
  bool first = true;
  BatchProcessorOptions options;
  options.max_queue_size = 1;
  options.max_export_batch_size = 1;
  BatchWorker<std::string> worker(
      [&](const std::vector<std::string>&) {
        if (first) {
          first = false;
          exporting.set_value();
          released.wait();  // keeps the first batch in flight
        }
        return ExportResult{};
      },
      options);
  std::string a = "queued then exported", b = "queued", c = "dropped: the queue is full";
  EXPECT_TRUE(worker.Push(std::move(a)));
  exporting.get_future().wait();
  EXPECT_TRUE(worker.Push(std::move(b)));
  EXPECT_FALSE(worker.Push(std::move(c)));
  EXPECT_EQ(c, "dropped: the queue is full");
  release.set_value();
  EXPECT_TRUE(worker.ForceFlush(std::chrono::seconds(10)));
  EXPECT_EQ(worker.stats().dropped_queue_full, 1u);
}

}  // namespace
}  // namespace laneguard::internal
