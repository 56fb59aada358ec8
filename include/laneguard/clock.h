// Clock: the one source of time for the core, injectable so that time-dependent logic (timeouts,
// durations, sampling intervals) is tested with a fake clock, fast and deterministically.
//
// Thread safety: implementations must be safe to call from any thread. SystemClock and ManualClock
// are.
#ifndef LANEGUARD_CLOCK_H_
#define LANEGUARD_CLOCK_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "laneguard/internal/wall_clock_anchor.h"

namespace laneguard {

// Bounds that keep deadline arithmetic (nanoseconds in int64) far from overflow: 30 days, and a
// hard deadline at most 100x the timeout. The bounds of the config's defaultTimeoutMs and
// timeoutEscalationFactor and of every per-call timeout.
inline constexpr int64_t kMaxTimeoutMs = 30LL * 24 * 3600 * 1000;
inline constexpr double kMaxEscalationFactor = 100;

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time in nanoseconds; only differences are meaningful.
  virtual int64_t MonotonicNanos() const = 0;
  // Wall-clock time in nanoseconds since the Unix epoch.
  virtual int64_t UnixNanos() const = 0;
  // Both, at one moment. The default reads each; FastClock reads its counter once.
  struct Reading {
    int64_t mono_nanos = 0;
    int64_t unix_nanos = 0;
  };
  virtual Reading Now() const { return {MonotonicNanos(), UnixNanos()}; }
  // The wall-clock time at a recent monotonic time (read from this clock). The default reads both
  // clocks; FastClock and ManualClock know their offset.
  virtual int64_t UnixAt(int64_t mono_nanos) const {
    return UnixNanos() - MonotonicNanos() + mono_nanos;
  }
};

// steady_clock and system_clock. A process-wide instance: SystemClock::Get().
class SystemClock final : public Clock {
 public:
  static const SystemClock& Get();
  int64_t MonotonicNanos() const override;
  int64_t UnixNanos() const override;
};

// steady_clock's time read from the CPU's time-stamp counter, where that is safe: the kernel uses
// the TSC as its own clocksource (so it is invariant and synchronized across CPUs). Calibrated once
// against steady_clock (about 5 ms, on first use), it reads in about 10 ns where a VM's vDSO
// clock_gettime takes 25-30 ns, and a worker call reads the clock twice. Its rate matches
// steady_clock's to the calibration's precision (about 1e-5), which moves a 300 s deadline by a few
// milliseconds at most. Elsewhere (clocksource kvm-clock, hpet, xen, a CPU without a TSC) it is
// steady_clock. The manager's default clock. The choice is made once per process: if the kernel
// later abandons the TSC (a VM migrated to another host), the process keeps the calibrated rate
// until it restarts.
//
// Wall-clock time, on either path: MonotonicNanos() plus an offset from system_clock, read again
// once it is a second old (of monotonic time), so a wall-clock step shows within a second
// (internal/wall_clock_anchor.h). One anchor serves Now() and UnixAt(), so
// UnixAt(Now().mono_nanos) == Now().unix_nanos, unless another thread re-read the offset in between
// (then they differ by the two clocks' drift over a second: nanoseconds).
class FastClock final : public Clock {
 public:
  // The process's clock; the TSC decision is read from
  // /sys/devices/system/clocksource/clocksource0/current_clocksource, or from the environment
  // variable LANEGUARD_CLOCKSOURCE when it is set ("kvm-clock" forces the fallback).
  static const FastClock& Get();
  // A clock of its own (tests, tools): `kernel_uses_tsc` stands for the kernel's decision, so
  // either path can run on any machine. With true on a CPU without a TSC, or one whose counter does
  // not advance, it is steady_clock all the same.
  explicit FastClock(bool kernel_uses_tsc);
  FastClock(const FastClock&) = delete;
  FastClock& operator=(const FastClock&) = delete;

  int64_t MonotonicNanos() const override;
  int64_t UnixNanos() const override;
  Reading Now() const override;
  int64_t UnixAt(int64_t mono_nanos) const override;
  bool uses_tsc() const { return mult_ != 0; }

 private:
  uint64_t tsc0_ = 0;
  int64_t mono0_ = 0;
  uint64_t mult_ = 0;  // nanoseconds per tick, as a 32.32 fixed-point number; 0: not in use
  mutable internal::WallClockAnchor anchor_;
};

namespace internal {
// Whether the kernel's current clocksource, as current_clocksource reads ("tsc\n"), is the TSC.
bool IsTscClocksource(std::string_view current_clocksource);
// The kernel's current clocksource ("tsc", "kvm-clock", ...), or "" when it cannot be read.
std::string CurrentClocksource();
}  // namespace internal

// A clock that moves only when told. Starts at monotonic 0 and the given Unix time.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t unix_start_nanos = 1'767'225'600'000'000'000)  // 2026-01-01T00:00Z
      : unix_offset_(unix_start_nanos) {}
  int64_t MonotonicNanos() const override { return now_.load(std::memory_order_acquire); }
  int64_t UnixNanos() const override { return unix_offset_ + MonotonicNanos(); }
  int64_t UnixAt(int64_t mono_nanos) const override { return unix_offset_ + mono_nanos; }
  void AdvanceNanos(int64_t d) { now_.fetch_add(d, std::memory_order_acq_rel); }
  void AdvanceMs(int64_t ms) { AdvanceNanos(ms * 1'000'000); }

 private:
  const int64_t unix_offset_;
  std::atomic<int64_t> now_{0};
};

// ISO 8601 UTC with milliseconds, as JavaScript's Date.toISOString(): "2025-10-22T21:00:00.000Z".
std::string FormatIso8601(int64_t unix_nanos);

}  // namespace laneguard

#endif  // LANEGUARD_CLOCK_H_
