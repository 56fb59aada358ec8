#include "base/thread_counters.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>
#include <vector>

namespace laneguard::internal {
namespace {

// Under ThreadSanitizer this is also the proof that a block is written by one thread only.
TEST(ThreadCounters, SumsWhatEveryThreadAdded) {
  ThreadCounters counters(5);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&counters, t] {
      for (int i = 0; i < 50'000; ++i) counters.Increment(static_cast<size_t>((i + t) % 5));
    });
  }
  // Read while they add: never more than was added, never less than before.
  int64_t last = 0;
  for (int r = 0; r < 100; ++r) {
    int64_t total = 0;
    for (int64_t n : counters.Sums()) total += n;
    EXPECT_GE(total, last);
    EXPECT_LE(total, 4 * 50'000);
    last = total;
  }
  for (auto& t : threads) t.join();
  const std::vector<int64_t> sums = counters.Sums();
  ASSERT_EQ(sums.size(), 5u);
  for (int64_t n : sums) EXPECT_EQ(n, 4 * 50'000 / 5);
}

// Blocks of exited threads are folded into one total when the next thread registers, so memory
// follows the live threads, and nothing they counted is lost.
TEST(ThreadCounters, ExitedThreadsAreFoldedWithoutLosingCounts) {
  ThreadCounters counters(2);
  for (int t = 0; t < 10; ++t) {
    std::thread([&counters] {
      for (int i = 0; i < 100; ++i) counters.Increment(1);
    }).join();
  }
  // Each thread folded the ones before it: one block left, the last thread's.
  EXPECT_EQ(counters.BlockCount(), 1u);
  EXPECT_EQ(counters.Sums(), (std::vector<int64_t>{0, 1000}));
}

// The thread's cache is keyed by a serial number, not an address: a new object at a dead one's
// address starts from zero.
TEST(ThreadCounters, ANewObjectNeverSeesAnEarlierOnesCounts) {
  for (int round = 0; round < 20; ++round) {
    auto counters = std::make_unique<ThreadCounters>(1);
    counters->Increment(0);
    EXPECT_EQ(counters->Sums()[0], 1) << "round " << round;
  }
}

// A thread that alternates between two objects takes the slow path on each switch but finds its
// own block again: no new block per switch.
TEST(ThreadCounters, AThreadAlternatingBetweenTwoObjectsKeepsOneBlockInEach) {
  ThreadCounters a(1), b(1);
  for (int i = 0; i < 1000; ++i) {
    a.Increment(0);
    b.Increment(0);
    b.Increment(0);
  }
  EXPECT_EQ(a.Sums()[0], 1000);
  EXPECT_EQ(b.Sums()[0], 2000);
  EXPECT_EQ(a.BlockCount(), 1u);
  EXPECT_EQ(b.BlockCount(), 1u);
}

// A thread may outlive the object it added to, and add to another one later.
TEST(ThreadCounters, AThreadOutlivesTheObjectsItAddedTo) {
  for (int round = 0; round < 3; ++round) {
    auto gone = std::make_unique<ThreadCounters>(3);
    gone->Increment(2);
    gone.reset();
    ThreadCounters next(3);
    next.Increment(0);
    EXPECT_EQ(next.Sums(), (std::vector<int64_t>{1, 0, 0}));
  }
}

}  // namespace
}  // namespace laneguard::internal
