#include "laneguard/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace laneguard {
namespace {

TEST(FastClock, NeverGoesBackwardsOnAnyThread) {
  const Clock& clock = FastClock::Get();
  std::vector<std::thread> threads;
  std::atomic<int> backwards{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      int64_t last = clock.MonotonicNanos();
      for (int i = 0; i < 200000; ++i) {
        const int64_t now = clock.MonotonicNanos();
        if (now < last) ++backwards;
        last = now;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(backwards.load(), 0);
}

// Not a speed assertion: both clocks measure the same interval, and must agree on its length.
TEST(FastClock, AgreesWithSteadyClock) {
  const Clock& fast = FastClock::Get();
  const Clock& steady = SystemClock::Get();
  const int64_t f0 = fast.MonotonicNanos(), s0 = steady.MonotonicNanos();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const int64_t f1 = fast.MonotonicNanos(), s1 = steady.MonotonicNanos();
  const double fast_elapsed = static_cast<double>(f1 - f0);
  const double steady_elapsed = static_cast<double>(s1 - s0);
  EXPECT_NEAR(fast_elapsed, steady_elapsed, steady_elapsed * 0.01 + 200'000)
      << "uses_tsc=" << FastClock::Get().uses_tsc();
  // Same time scale: readings taken together are close.
  EXPECT_NEAR(static_cast<double>(fast.MonotonicNanos()),
              static_cast<double>(steady.MonotonicNanos()), 5'000'000);
}

}  // namespace
}  // namespace laneguard
