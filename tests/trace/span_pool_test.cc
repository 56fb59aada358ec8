#include "trace/span_pool.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "trace/batch_worker.h"

namespace laneguard::internal {
namespace {

SpanData SmallSpan() {
  SpanData span;
  span.name = "worker_call:tool_call";
  span.attributes.push_back({"taskId", std::string("t-1")});
  span.events.push_back({"acquired_slot", 1, {{"globalConcurrency", int64_t{1}}}, 0});
  return span;
}

// Each test runs on a fresh thread, so its cache starts empty.
template <typename Fn>
void OnNewThread(Fn fn) {
  std::thread(fn).join();
}

TEST(SpanPoolTest, RecycledBuffersComeBackWithTheirCapacity) {
  OnNewThread([] {
    std::vector<SpanData> batch(3, SmallSpan());
    RecycleSpanData(batch);
    EXPECT_TRUE(batch.empty());
    EXPECT_EQ(PooledSpanCount(), 3u);
    SpanData taken;
    TakeSpanData(taken);
    EXPECT_EQ(PooledSpanCount(), 2u);
    EXPECT_GE(taken.name.capacity(), std::string("worker_call:tool_call").size());
    EXPECT_GE(taken.events.capacity(), 1u);
  });
}

// The cache is this thread's: spans recycled on one thread are not taken on another.
TEST(SpanPoolTest, EachThreadHasItsOwnCache) {
  OnNewThread([] {
    RecycleSpanData(SmallSpan());
    EXPECT_EQ(PooledSpanCount(), 1u);
    OnNewThread([] { EXPECT_EQ(PooledSpanCount(), 0u); });
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
    RecycleSpanData(batch);
    EXPECT_TRUE(batch.empty());
    EXPECT_EQ(PooledSpanCount(), 0u);
  });
}

TEST(SpanPoolTest, TheCacheIsBounded) {
  OnNewThread([] {
    std::vector<SpanData> batch(3 * kMaxPooledSpans, SmallSpan());
    RecycleSpanData(batch);
    EXPECT_TRUE(batch.empty());
    EXPECT_EQ(PooledSpanCount(), kMaxPooledSpans);
  });
}

TEST(SpanPoolTest, TakingFromAnEmptyCacheLeavesTheSpanAsItWas) {
  OnNewThread([] {
    SpanData span = SmallSpan();
    TakeSpanData(span);
    EXPECT_EQ(span.name, "worker_call:tool_call");
    EXPECT_EQ(span.attributes.size(), 1u);
  });
}

// Push's contract: a dropped item is left as it was, for the caller to free or reuse.
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

// More than a batch queued while an export is in flight: the queue is taken off whole (Push never
// waits for items to be moved) and exported in order, in batches of at most max_export_batch_size.
TEST(BatchWorkerTest, ALongQueueGoesOutInOrderInBatchesOfAtMostTheBatchSize) {
  std::promise<void> exporting, release;
  std::shared_future<void> released = release.get_future().share();
  std::vector<std::string> exported;
  std::vector<size_t> sizes;
  BatchProcessorOptions options;
  options.max_queue_size = 100;
  options.max_export_batch_size = 3;
  options.schedule_delay = std::chrono::hours(1);
  BatchWorker<std::string> worker(
      [&](const std::vector<std::string>& batch) {
        if (sizes.empty()) {
          exporting.set_value();
          released.wait();
        }
        sizes.push_back(batch.size());
        exported.insert(exported.end(), batch.begin(), batch.end());
        return ExportResult{};
      },
      options);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(worker.Push(std::to_string(i)));  // a full batch
  exporting.get_future().wait();
  for (int i = 3; i < 13; ++i) EXPECT_TRUE(worker.Push(std::to_string(i)));
  EXPECT_EQ(worker.stats().pending, 13u);
  release.set_value();
  ASSERT_TRUE(worker.ForceFlush(std::chrono::seconds(60)));
  std::vector<std::string> expected;
  for (int i = 0; i < 13; ++i) expected.push_back(std::to_string(i));
  EXPECT_EQ(exported, expected);
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 3, 3, 1}));
  const BatchExportStats stats = worker.stats();
  EXPECT_EQ(stats.exported, 13u);
  EXPECT_EQ(stats.pending, 0u);
}

// Items taken off the queue but not yet exported when shutdown_timeout runs out are dropped and
// counted like the ones still queued.
TEST(BatchWorkerTest, ShutdownTimeoutDropsTheRestOfATakenBacklog) {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  bool first_released = false, cancelled = false;
  BatchProcessorOptions options;
  options.max_queue_size = 100;
  options.max_export_batch_size = 2;
  options.schedule_delay = std::chrono::hours(1);
  options.shutdown_timeout = std::chrono::milliseconds(50);
  BatchWorker<int> worker(
      [&](const std::vector<int>&) {
        std::unique_lock<std::mutex> lock(mu);
        ++calls;
        cv.notify_all();
        // The first batch waits for the test; the second (the backlog's first) for the cancel.
        cv.wait(lock, [&] { return calls == 1 ? first_released : cancelled; });
        return ExportResult{};
      },
      options);
  EXPECT_TRUE(worker.Push(0));
  EXPECT_TRUE(worker.Push(1));  // a full batch: exported, and held
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return calls == 1; });
  }
  for (int i = 2; i < 10; ++i) EXPECT_TRUE(worker.Push(int{i}));  // 8 queued: taken as a backlog
  {
    std::unique_lock<std::mutex> lock(mu);
    first_released = true;
    cv.notify_all();
    cv.wait(lock, [&] { return calls == 2; });  // the backlog's first batch is in flight
  }
  EXPECT_TRUE(worker.Shutdown([&] {
    std::lock_guard<std::mutex> lock(mu);
    cancelled = true;
    cv.notify_all();
  }));
  const BatchExportStats stats = worker.stats();
  EXPECT_EQ(stats.exported, 4u);
  EXPECT_EQ(stats.dropped_shutdown_timeout, 6u);
  EXPECT_EQ(stats.pending, 0u);
  EXPECT_EQ(stats.queued, stats.exported + stats.dropped() + stats.pending);
}

}  // namespace
}  // namespace laneguard::internal
