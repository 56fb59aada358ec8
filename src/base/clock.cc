#include "laneguard/clock.h"

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include "base/tsc_calibration.h"

namespace laneguard {

// The process's clocks are never destroyed: the default manager (GetResourceBudgetManager) is
// never destroyed either, and its timer thread reads its clock until the process is gone, after
// static destructors have run.
const SystemClock& SystemClock::Get() {
  static const SystemClock* const clock = new SystemClock;
  return *clock;
}

int64_t SystemClock::MonotonicNanos() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t SystemClock::UnixNanos() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

#if defined(__x86_64__) || defined(__i386__)
inline uint64_t ReadTsc() { return __builtin_ia32_rdtsc(); }
constexpr bool kHaveTsc = true;
#else
inline uint64_t ReadTsc() { return 0; }
constexpr bool kHaveTsc = false;
#endif

}  // namespace

namespace internal {

bool IsTscClocksource(std::string_view current_clocksource) {
  while (!current_clocksource.empty() &&
         (current_clocksource.back() == '\n' || current_clocksource.back() == ' '))
    current_clocksource.remove_suffix(1);
  return current_clocksource == "tsc";
}

std::string CurrentClocksource() {
  std::ifstream in("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string source;
  in >> source;
  return source;
}

TscCalibration CalibrateTsc(const std::function<uint64_t()>& read_tsc,
                            const std::function<int64_t()>& read_mono,
                            const std::function<void()>& wait, int64_t window_nanos) {
  struct Pair {
    uint64_t tsc = 0;
    int64_t mono = 0;
  };
  const auto read_pair = [&] {
    Pair best;
    int64_t best_width = INT64_MAX;
    for (int i = 0; i < 5; ++i) {
      const int64_t before = read_mono();
      const uint64_t tsc = read_tsc();
      const int64_t after = read_mono();
      if (after - before < best_width) {
        best_width = after - before;
        best = {tsc, before + (after - before) / 2};
      }
    }
    return best;
  };
  const Pair start = read_pair();
  while (read_mono() - start.mono < window_nanos) wait();
  const Pair end = read_pair();
  if (end.tsc <= start.tsc) return {};
  const double ns_per_tick =
      static_cast<double>(end.mono - start.mono) / static_cast<double>(end.tsc - start.tsc);
  return {end.tsc, end.mono, static_cast<uint64_t>(ns_per_tick * 4294967296.0)};
}

}  // namespace internal

FastClock::FastClock(bool kernel_uses_tsc) {
  if (!kHaveTsc || !kernel_uses_tsc) return;
  const SystemClock& steady = SystemClock::Get();
  const internal::TscCalibration c = internal::CalibrateTsc(
      ReadTsc, [&steady] { return steady.MonotonicNanos(); },
      [] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); }, 5'000'000);
  tsc0_ = c.tsc0;
  mono0_ = c.mono0;
  mult_ = c.mult;
}

// LANEGUARD_CLOCKSOURCE, when set, stands in for the kernel's answer: a whole test run (or a
// program) takes the fallback on a tsc machine, or the TSC where the kernel does not use it.
const FastClock& FastClock::Get() {
  static const FastClock* const clock = new FastClock([] {
    // Read once, under the static's initialization; laneguard never sets the environment.
    const char* forced = std::getenv("LANEGUARD_CLOCKSOURCE");  // NOLINT(concurrency-mt-unsafe)
    return internal::IsTscClocksource(forced != nullptr && *forced != '\0'
                                          ? std::string(forced)
                                          : internal::CurrentClocksource());
  }());
  return *clock;
}

int64_t FastClock::MonotonicNanos() const {
  if (mult_ == 0) return SystemClock::Get().MonotonicNanos();
  __extension__ using Wide = unsigned __int128;  // 64x64 -> 128-bit product; g++ extension
  // Signed: a read on another CPU may land a few ticks before the calibration's last one.
  const auto ticks = static_cast<int64_t>(ReadTsc() - tsc0_);
  if (ticks < 0) {
    return mono0_ - static_cast<int64_t>((static_cast<Wide>(-ticks) * mult_) >> 32);
  }
  return mono0_ + static_cast<int64_t>((static_cast<Wide>(ticks) * mult_) >> 32);
}

int64_t FastClock::UnixNanos() const { return Now().unix_nanos; }

// The fallback anchors as well: reading system_clock on its own here would make Now() and UnixAt()
// two pairs of reads that disagree by the time between them (tens of nanoseconds on kvm-clock).
Clock::Reading FastClock::Now() const {
  const int64_t mono = MonotonicNanos();
  return {mono, UnixAt(mono)};
}

int64_t FastClock::UnixAt(int64_t mono_nanos) const {
  return anchor_.UnixAt(mono_nanos, [] { return SystemClock::Get().UnixNanos(); });
}

// By hand rather than gmtime_r + snprintf: every released call's record carries one when anyone
// observes the manager, and those two calls cost about 5,300 instructions, most of the call.
// int64 nanoseconds span the years 1677 to 2262, so the year always has four digits.
std::string FormatIso8601(int64_t unix_nanos) {
  using namespace std::chrono;
  const sys_time<milliseconds> time =
      floor<milliseconds>(sys_time<nanoseconds>(nanoseconds(unix_nanos)));
  const sys_days day = floor<days>(time);
  const year_month_day date(day);
  const hh_mm_ss<milliseconds> clock_time(time - day);
  char text[] = "0000-00-00T00:00:00.000Z";
  const auto put = [&text](size_t at, unsigned value, int digits) {
    for (int i = digits - 1; i >= 0; --i, value /= 10)
      text[at + i] = static_cast<char>('0' + value % 10);
  };
  put(0, static_cast<unsigned>(static_cast<int>(date.year())), 4);
  put(5, static_cast<unsigned>(date.month()), 2);
  put(8, static_cast<unsigned>(date.day()), 2);
  put(11, static_cast<unsigned>(clock_time.hours().count()), 2);
  put(14, static_cast<unsigned>(clock_time.minutes().count()), 2);
  put(17, static_cast<unsigned>(clock_time.seconds().count()), 2);
  put(20, static_cast<unsigned>(clock_time.subseconds().count()), 3);
  return std::string(text, sizeof text - 1);
}

}  // namespace laneguard
