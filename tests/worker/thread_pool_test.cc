#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "laneguard/executor.h"

namespace laneguard {
namespace {

TEST(ThreadPool, RunsEveryTaskOnItsOwnThreads) {
  ThreadPool pool(3);
  EXPECT_EQ(pool.thread_count(), 3u);
  std::atomic<int> ran{0};
  std::atomic<int> on_caller{0};
  const std::thread::id caller = std::this_thread::get_id();
  for (int i = 0; i < 1000; ++i) {
    pool.Submit([&] {
      if (std::this_thread::get_id() == caller) ++on_caller;
      ++ran;
    });
  }
  pool.Shutdown();
  EXPECT_EQ(ran.load(), 1000);
  EXPECT_EQ(on_caller.load(), 0);
  EXPECT_EQ(pool.completed(), 1000u);
  EXPECT_EQ(pool.queued(), 0u);
}

TEST(ThreadPool, OneThreadRunsTasksInSubmissionOrder) {
  std::vector<int> order;
  {
    ThreadPool pool(1);
    for (int i = 0; i < 100; ++i) pool.Submit([&order, i] { order.push_back(i); });
  }  // the destructor drains the queue before joining
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

// Shutdown loses nothing: what was queued runs, and what those tasks submit runs too; an outsider's
// later submission is refused loudly instead of silently never running.
TEST(ThreadPool, ShutdownRunsTheQueueAndRefusesOutsiders) {
  ThreadPool pool(2);
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::atomic<int> ran{0};
  std::atomic<int> blocked{0};
  for (int i = 0; i < 2; ++i) {  // both threads busy
    pool.Submit([open, &blocked] {
      ++blocked;
      open.wait();
    });
  }
  while (blocked.load() < 2) std::this_thread::yield();
  for (int i = 0; i < 10; ++i) {
    pool.Submit([&pool, &ran] {
      ++ran;
      pool.Submit([&ran] { ++ran; });  // from a task: accepted even while shutting down
    });
  }
  EXPECT_EQ(pool.queued(), 10u);
  std::thread stopper([&pool] { pool.Shutdown(); });
  // Shutdown has begun once an outsider is refused.
  for (;;) {
    try {
      pool.Submit([] {});
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } catch (const std::logic_error& e) {
      EXPECT_NE(std::string(e.what()).find("Submit after Shutdown"), std::string::npos);
      break;
    }
  }
  gate.set_value();
  stopper.join();
  EXPECT_EQ(ran.load(), 20);
  pool.Shutdown();  // idempotent
}

TEST(ThreadPool, ZeroThreadsIsAnErrorNamingTheValue) {
  try {
    ThreadPool pool(0);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "ThreadPool: threads must be at least 1, got 0");
  }
}

}  // namespace
}  // namespace laneguard
