#include "laneguard/clock.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>
#include <thread>

namespace laneguard {

const SystemClock& SystemClock::Get() {
  static const SystemClock clock;
  return clock;
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

bool KernelUsesTsc() {
  std::ifstream in("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  std::string source;
  return static_cast<bool>(in >> source) && source == "tsc";
}

}  // namespace

FastClock::FastClock() {
  if (!kHaveTsc || !KernelUsesTsc()) return;
  const SystemClock& steady = SystemClock::Get();
  const uint64_t tsc_start = ReadTsc();
  const int64_t mono_start = steady.MonotonicNanos();
  int64_t mono_end = mono_start;
  while (mono_end - mono_start < 5'000'000) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    mono_end = steady.MonotonicNanos();
  }
  const uint64_t tsc_end = ReadTsc();
  if (tsc_end <= tsc_start) return;
  const double ns_per_tick =
      static_cast<double>(mono_end - mono_start) / static_cast<double>(tsc_end - tsc_start);
  tsc0_ = tsc_end;
  mono0_ = mono_end;
  mult_ = static_cast<uint64_t>(ns_per_tick * 4294967296.0);
}

const FastClock& FastClock::Get() {
  static const FastClock clock;
  return clock;
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

int64_t FastClock::UnixNanos() const { return SystemClock::Get().UnixNanos(); }

std::string FormatIso8601(int64_t unix_nanos) {
  int64_t ms = unix_nanos / 1'000'000;
  if (unix_nanos < 0 && unix_nanos % 1'000'000 != 0) --ms;  // floor for pre-1970 times
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  int millis = static_cast<int>(ms % 1000);
  if (millis < 0) {
    millis += 1000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  return buf;
}

}  // namespace laneguard
