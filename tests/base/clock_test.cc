#include "laneguard/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "base/tsc_calibration.h"
#include "laneguard/internal/wall_clock_anchor.h"

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

// The kernel's choice, as sysfs writes it, selects the TSC only when it is "tsc".
TEST(FastClock, SelectsTheTscOnlyWhenTheKernelUsesIt) {
  EXPECT_TRUE(internal::IsTscClocksource("tsc\n"));
  EXPECT_TRUE(internal::IsTscClocksource("tsc"));
  EXPECT_FALSE(internal::IsTscClocksource("kvm-clock\n"));
  EXPECT_FALSE(internal::IsTscClocksource("hpet\n"));
  EXPECT_FALSE(internal::IsTscClocksource("tsc-early\n"));
  EXPECT_FALSE(internal::IsTscClocksource(""));  // unreadable: the fallback
  EXPECT_FALSE(FastClock(false).uses_tsc());
#if defined(__x86_64__) || defined(__i386__)
  EXPECT_TRUE(FastClock(true).uses_tsc());
  const char* forced = std::getenv("LANEGUARD_CLOCKSOURCE");
  const std::string source =
      forced != nullptr && *forced != '\0' ? forced : internal::CurrentClocksource();
  EXPECT_EQ(FastClock::Get().uses_tsc(), internal::IsTscClocksource(source))
      << "clocksource: " << source << " (LANEGUARD_CLOCKSOURCE " << (forced ? forced : "unset")
      << ")";
#endif
}

// Both paths run on every machine: the parameter stands for the kernel's decision.
class FastClockPath : public ::testing::TestWithParam<bool> {
 protected:
  // The TSC path on a machine whose kernel does not trust the TSC: its arithmetic is checked, but
  // not its agreement with the kernel's clocks (the kernel may have had a reason).
  bool TscForcedAgainstTheKernel() const {
    return GetParam() && !internal::IsTscClocksource(internal::CurrentClocksource());
  }
  FastClock clock_{GetParam()};
};

INSTANTIATE_TEST_SUITE_P(KernelUsesTsc, FastClockPath, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Tsc" : "Fallback"; });

// One anchor serves Now() and UnixAt(): the wall-clock time of a reading's monotonic time is the
// reading's wall-clock time, exactly.
TEST_P(FastClockPath, UnixAtOfANowIsThatNowsUnixTime) {
  for (int i = 0; i < 1000; ++i) {
    const Clock::Reading now = clock_.Now();
    EXPECT_EQ(clock_.UnixAt(now.mono_nanos), now.unix_nanos);
    EXPECT_EQ(clock_.UnixAt(now.mono_nanos + 1'000), now.unix_nanos + 1'000);
  }
}

// Wall-clock readings stay within the offset's age of system_clock's.
TEST_P(FastClockPath, UnixNanosAgreesWithTheSystemClock) {
  if (TscForcedAgainstTheKernel()) {
    GTEST_SKIP() << "the kernel's clocksource is '" << internal::CurrentClocksource()
                 << "', not the TSC: the TSC path's agreement with system_clock is not checked";
  }
  const SystemClock& system = SystemClock::Get();
  // The offset is up to a second old: off by the TSC's rate error over that second (about 10 us;
  // NTP slews CLOCK_MONOTONIC and CLOCK_REALTIME alike), well within a millisecond.
  constexpr int64_t kAllowance = 1'000'000;
  for (int i = 0; i < 1000; ++i) {
    const int64_t before = system.UnixNanos();
    const Clock::Reading now = clock_.Now();
    const int64_t after = system.UnixNanos();
    EXPECT_GE(now.unix_nanos, before - kAllowance);
    EXPECT_LE(now.unix_nanos, after + kAllowance);
  }
}

// Not a speed assertion: both clocks measure the same interval, and must agree on its length to
// 0.05% (the calibration is good to about 1e-5; the TscCalibration tests above check it against
// the delays that once made it 0.2% slow) and on the time itself.
TEST_P(FastClockPath, AgreesWithSteadyClock) {
  if (TscForcedAgainstTheKernel()) {
    GTEST_SKIP() << "the kernel's clocksource is '" << internal::CurrentClocksource()
                 << "', not the TSC: the TSC path's rate is not compared with steady_clock";
  }
  const Clock& steady = SystemClock::Get();
  const double offset0 = Offset(clock_, steady);
  const int64_t s0 = steady.MonotonicNanos();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const double drift = Offset(clock_, steady) - offset0;
  const auto elapsed = static_cast<double>(steady.MonotonicNanos() - s0);
  EXPECT_NEAR(drift, 0.0, elapsed * 0.0005) << "uses_tsc=" << clock_.uses_tsc();
  EXPECT_NEAR(Offset(clock_, steady), 0.0, 5'000'000);
}

}  // namespace
}  // namespace laneguard
