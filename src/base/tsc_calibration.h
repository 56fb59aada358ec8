// The TSC-to-steady_clock calibration behind FastClock, apart from the hardware so that tests can
// give it a simulated counter and clock.
//
// Thread safety: a pure function of what its callbacks return.
#ifndef LANEGUARD_SRC_BASE_TSC_CALIBRATION_H_
#define LANEGUARD_SRC_BASE_TSC_CALIBRATION_H_

#include <cstdint>
#include <functional>

namespace laneguard::internal {

// monotonic = mono0 + ((tsc - tsc0) * mult) >> 32.
struct TscCalibration {
  uint64_t tsc0 = 0;
  int64_t mono0 = 0;
  uint64_t mult = 0;  // nanoseconds per tick, 32.32 fixed point; 0: the counter did not advance
};

// Measures the counter's rate against the clock over at least `window_nanos`, calling `wait`
// (which should sleep a little) until that much clock time has passed. Each end of the window is
// a counter read between two clock reads, the tightest of a few tries, paired with their midpoint:
// a delay between a plain pair of reads (the process's first clock_gettime faulting in the vDSO's
// page, a preemption) would otherwise count as time and skew the rate by delay / window.
TscCalibration CalibrateTsc(const std::function<uint64_t()>& read_tsc,
                            const std::function<int64_t()>& read_mono,
                            const std::function<void()>& wait, int64_t window_nanos);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_BASE_TSC_CALIBRATION_H_
