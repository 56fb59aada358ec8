#include "laneguard/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#include "core/tsc_calibration.h"
#include "core/wall_clock_anchor.h"

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

// A simulated machine for the calibration: true time advances by what each read costs, and the
// counter ticks at 2.5 GHz (0.4 ns per tick).
struct Machine {
  int64_t now = 1'000'000'000;
  int mono_reads = 0;
  int tsc_reads = 0;
  bool after_tsc = false;  // the clock read that closes a pair
  // Extra time taken by a clock read, before it reads the time.
  std::function<int64_t(const Machine&)> extra_cost = [](const Machine&) { return 0; };
  uint64_t Tsc() {
    now += 8;
    ++tsc_reads;
    after_tsc = true;
    return static_cast<uint64_t>(now) * 5 / 2;
  }
  int64_t Mono() {
    now += 25 + extra_cost(*this);
    ++mono_reads;
    after_tsc = false;
    return now;
  }
  internal::TscCalibration Calibrate() {
    return internal::CalibrateTsc([this] { return Tsc(); }, [this] { return Mono(); },
                                  [this] { now += 1'000'000; }, 5'000'000);
  }
};

double NanosPerTick(const internal::TscCalibration& c) {
  return static_cast<double>(c.mult) / 4294967296.0;
}

TEST(TscCalibration, ASlowFirstClockReadDoesNotSkewTheRate) {
  Machine m;
  m.extra_cost = [](const Machine& m) { return m.mono_reads == 0 ? 10'000 : 0; };  // vDSO fault
  const internal::TscCalibration c = m.Calibrate();
  EXPECT_NEAR(NanosPerTick(c), 0.4, 0.4 * 1e-5);
  // The anchor pairs a counter value with the time it was read at.
  EXPECT_NEAR(static_cast<double>(c.mono0), static_cast<double>(c.tsc0) * 0.4, 50);
}

TEST(TscCalibration, APreemptionInsideOnePairOfReadsIsLeftOut) {
  Machine m;
  // 50 us lost between the counter read and the closing clock read of the first try at each end
  // of the window (the first and the sixth counter reads).
  m.extra_cost = [](const Machine& m) {
    return m.after_tsc && (m.tsc_reads == 1 || m.tsc_reads == 6) ? 50'000 : 0;
  };
  EXPECT_NEAR(NanosPerTick(m.Calibrate()), 0.4, 0.4 * 1e-5);
}

TEST(TscCalibration, ACounterThatDoesNotAdvanceIsNotUsed) {
  int64_t now = 0;
  const internal::TscCalibration c =
      internal::CalibrateTsc([] { return uint64_t{42}; }, [&now] { return now += 100; },
                             [&now] { now += 1'000'000; }, 5'000'000);
  EXPECT_EQ(c.mult, 0u);
}

// FastClock minus steady_clock at one moment: the fast read between two steady reads, the
// tightest of a few tries, against their midpoint (a preemption between plain paired reads would
// show up as clock error).
double Offset(const Clock& fast, const Clock& steady) {
  double best_offset = 0;
  int64_t best_width = INT64_MAX;
  for (int i = 0; i < 5; ++i) {
    const int64_t before = steady.MonotonicNanos();
    const int64_t f = fast.MonotonicNanos();
    const int64_t after = steady.MonotonicNanos();
    if (after - before < best_width) {
      best_width = after - before;
      best_offset = static_cast<double>(f) - (static_cast<double>(before) + (after - before) / 2.0);
    }
  }
  return best_offset;
}

// Not a speed assertion: both clocks measure the same interval, and must agree on its length to
// 0.05% (the calibration is good to about 1e-5; the TscCalibration tests above check it against
// the delays that once made it 0.2% slow) and on the time itself.
TEST(WallClockAnchor, ReadsTheWallClockOnceASecondOfMonotonicTime) {
  internal::WallClockAnchor anchor;
  int reads = 0;
  const int64_t wall0 = 1'700'000'000'000'000'000;
  int64_t wall = wall0;
  const auto read_wall = [&] {
    ++reads;
    return wall;
  };
  EXPECT_EQ(anchor.UnixAt(5'000, read_wall), wall0);  // the first reading anchors
  EXPECT_EQ(reads, 1);
  // Within a second: monotonic time plus the offset, and a wall-clock step is not seen yet.
  wall = wall0 + 3'600'000'000'000;
  EXPECT_EQ(anchor.UnixAt(5'000 + 999'999'999, read_wall), wall0 + 999'999'999);
  EXPECT_EQ(reads, 1);
  // A second on: read again, and the step shows.
  EXPECT_EQ(anchor.UnixAt(5'000 + 1'000'000'000, read_wall), wall);
  EXPECT_EQ(reads, 2);
  EXPECT_EQ(anchor.UnixAt(5'000 + 1'000'000'010, read_wall), wall + 10);
  EXPECT_EQ(reads, 2);
}

// Wall-clock readings through the TSC stay within the offset's age of system_clock's.
TEST(FastClock, UnixNanosAgreesWithTheSystemClock) {
  const FastClock& fast = FastClock::Get();
  const SystemClock& system = SystemClock::Get();
  // The offset is up to a second old: off by the TSC's rate error over that second (about 10 us;
  // NTP slews CLOCK_MONOTONIC and CLOCK_REALTIME alike), well within a millisecond.
  constexpr int64_t kAllowance = 1'000'000;
  for (int i = 0; i < 1000; ++i) {
    const int64_t before = system.UnixNanos();
    const Clock::Reading now = fast.Now();
    const int64_t after = system.UnixNanos();
    EXPECT_GE(now.unix_nanos, before - kAllowance);
    EXPECT_LE(now.unix_nanos, after + kAllowance);
    EXPECT_EQ(fast.UnixAt(now.mono_nanos) - now.unix_nanos, 0);
  }
}

TEST(FastClock, AgreesWithSteadyClock) {
  const Clock& fast = FastClock::Get();
  const Clock& steady = SystemClock::Get();
  const double offset0 = Offset(fast, steady);
  const int64_t s0 = steady.MonotonicNanos();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double drift = Offset(fast, steady) - offset0;
  const auto elapsed = static_cast<double>(steady.MonotonicNanos() - s0);
  EXPECT_NEAR(drift, 0.0, elapsed * 0.0005) << "uses_tsc=" << FastClock::Get().uses_tsc();
  EXPECT_NEAR(Offset(fast, steady), 0.0, 5'000'000);
}

}  // namespace
}  // namespace laneguard
