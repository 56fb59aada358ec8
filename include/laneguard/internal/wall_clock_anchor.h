// Wall-clock time as monotonic time plus an offset, the offset read from the wall clock again once
// it is a second old (of monotonic time). FastClock's UnixNanos: a span's start then costs a TSC
// read, not a vDSO clock_gettime (25-30 ns on a VM). A wall-clock step (settimeofday, an NTP step)
// shows within a second; OpenTelemetry's SDKs anchor a trace's times the same way.
//
// Internal: not part of laneguard's API. It lives under include/ only because FastClock holds one.
//
// Thread safety: thread-safe. Two threads may re-read at once; either offset is right (they differ
// by how far the two clocks drifted apart in a second, nanoseconds).
#ifndef LANEGUARD_INTERNAL_WALL_CLOCK_ANCHOR_H_
#define LANEGUARD_INTERNAL_WALL_CLOCK_ANCHOR_H_

#include <atomic>
#include <cstdint>

namespace laneguard::internal {

class WallClockAnchor {
 public:
  static constexpr int64_t kMaxAgeNanos = 1'000'000'000;

  // The wall-clock time at monotonic time `mono` (just read); `read_wall` is called when the
  // offset is missing or kMaxAgeNanos old.
  template <typename ReadWall>
  int64_t UnixAt(int64_t mono, const ReadWall& read_wall) {
    const int64_t at = anchored_at_.load(std::memory_order_acquire);
    if (at != kNever && mono - at < kMaxAgeNanos) {
      return mono + offset_.load(std::memory_order_relaxed);
    }
    const int64_t offset = read_wall() - mono;
    offset_.store(offset, std::memory_order_relaxed);
    anchored_at_.store(mono, std::memory_order_release);
    return mono + offset;
  }

 private:
  static constexpr int64_t kNever = INT64_MIN;
  std::atomic<int64_t> offset_{0};
  std::atomic<int64_t> anchored_at_{kNever};
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_INTERNAL_WALL_CLOCK_ANCHOR_H_
