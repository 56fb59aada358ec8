// Admission: which lane a call names and whether it may start. The lanes, the admission word
// (global and lane counts, see admission_word.h), the shutdown flag and the rejection counts.
//
// The lane and the global limit are checked and both counts taken in one compare-and-swap on the
// admission word when the lanes' counts fit in it, so neither count ever exceeds its limit, no two
// racing callers can both take the last place, and no lock is taken. Where the counts do not fit,
// the lane place and then the global one are taken by a compare-and-swap each (see TakeUnpacked).
//
// The hot methods are inline: they are most of TryAcquire's and Release's work, and a call into
// another translation unit would cost a tenth of a release.
//
// Limits change live (SetLimits): the lane and global limits are relaxed atomics, a plain load on
// the hot path (x86 and ARM alike), so a change costs admission no lock, fence or extra atomic
// read-modify-write. A take decided against the old limits just before a change is as if it came
// first; held places are never taken back, so a lowered limit only stops new takes.
//
// Thread safety: every method is safe from any thread, and none takes a lock.
#ifndef LANEGUARD_SRC_CORE_ADMISSION_H_
#define LANEGUARD_SRC_CORE_ADMISSION_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/thread_counters.h"
#include "core/admission_word.h"
#include "core/lane_index.h"
#include "laneguard/config.h"
#include "laneguard/metrics.h"

namespace laneguard::internal {

// One configured lane. Fixed at construction but for `limit` (Admission::SetLimits) and `active`,
// which only Admission touches.
struct LaneState {
  std::string name;
  std::atomic<int> limit{0};  // relaxed: a self-contained number, nothing published through it
  int Limit() const { return limit.load(std::memory_order_relaxed); }
  size_t index = 0;
  uint64_t delta = 1;  // what a call adds to the admission word (AdmissionLayout::Delta)
  // The lane's count when the admission word has no room for it (!AdmissionLayout::packed()).
  std::atomic<int> active{0};
};

// What a rejection found; the Rejection (with its lane string) is built once, in place. The
// counts are 64-bit so that nothing reads them as one word: the caller stores them one by one, and
// a wider load across two such stores waits for both to reach the cache (a store-forwarding stall,
// a third of the rejection path when the two ints were copied as one 8-byte word).
struct Refusal {
  RejectReason reason = RejectReason::kLaneLimit;
  int64_t active = 0, limit = 0;
  double rss_mb = 0, max_rss_mb = 0;
  int64_t timeout_ms = 0;
  // Refused because admission is gated (AdmissionLayout::kGated), not for the reason above: the
  // caller must ask again under the wait queue's lock (Waiting).
  bool gated = false;
};

class Admission {
 public:
  // `config` must be valid (ValidateConfig). The counts are laid out for a global limit of up to
  // max(max_global_limit, the config's): the most SetLimits may raise it to (max_global_limit()).
  Admission(const Config& config, int max_global_limit);
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  size_t lane_count() const { return lane_count_; }
  int global_limit() const { return global_limit_.load(std::memory_order_relaxed); }
  int max_global_limit() const { return max_global_limit_; }
  // Changes the limits (`lane_limits` in lane order, each <= `global_limit` <=
  // max_global_limit()). Held places are kept; takes from now on see the new limits.
  void SetLimits(int global_limit, const std::vector<int>& lane_limits);
  // The lane's number (its place in the config's map), or -1 if it is not configured.
  [[gnu::always_inline]] int FindLane(std::string_view name) const {
    return lane_lookup_.Find(name);
  }
  const LaneState& lane(size_t index) const { return lanes_[index]; }

  bool shutting_down() const { return shutting_down_.load(std::memory_order_relaxed); }
  void Shutdown() { shutting_down_.store(true, std::memory_order_relaxed); }

  // Takes a place in lane `index` and in the global count, or says why not. On success
  // `*lane_now` and `*global_now` are the counts including this call.
  [[gnu::always_inline]] std::optional<Refusal> Take(size_t index, int* lane_now, int* global_now) {
    LaneState& lane = lanes_[index];
    if (layout_.packed()) {
      // Read once per take: a plain load each (see SetLimits).
      const int lane_limit = lane.Limit();
      const int global_limit = global_limit_.load(std::memory_order_relaxed);
      uint64_t word = word_.load(std::memory_order_relaxed);
      do {
        // The gate bit counts as a full global count here (AdmissionLayout::GatedGlobal), so
        // checking it costs the grant path nothing; a refusal says whether it was set.
        const uint64_t global = layout_.GatedGlobal(word);
        *lane_now = layout_.Lane(word, lane.index);
        *global_now = static_cast<int>(global);  // the count whenever the call is granted
        if (*lane_now >= lane_limit) [[unlikely]] {
          return Refusal{RejectReason::kLaneLimit,
                         *lane_now,
                         lane_limit,
                         0,
                         0,
                         0,
                         (word & AdmissionLayout::kGated) != 0};
        }
        if (global >= static_cast<uint64_t>(global_limit)) [[unlikely]] {
          return Refusal{
              RejectReason::kGlobalLimit,           layout_.Global(word), global_limit, 0, 0, 0,
              (word & AdmissionLayout::kGated) != 0};
        }
      } while (!word_.compare_exchange_weak(word, word + lane.delta, std::memory_order_acq_rel,
                                            std::memory_order_relaxed));
    } else if (std::optional<Refusal> f = TakeUnpacked(lane, lane_now, global_now)) {
      return f;
    }
    ++*lane_now;
    ++*global_now;
    NoteConcurrent(*global_now);
    return std::nullopt;
  }

  // Hands back what Take took for one call in lane `index`, unless admission is gated: then the
  // global count (and a packed lane count) is left as it is and kGated returned, and the caller
  // hands the place on under the wait queue's lock (GiveBackGated). The count it keeps pins the
  // state until then: a destroyed manager's state is freed only when the count reaches zero.
  // Otherwise returns the word after when it is exactly kOrphaned (that was the last call of a
  // destroyed manager: the caller frees the state), else 0. One comparison on the release path.
  uint64_t GiveBack(size_t index) {
    LaneState& lane = lanes_[index];
    if (!layout_.packed()) lane.active.fetch_sub(1, std::memory_order_release);
    uint64_t word = word_.load(std::memory_order_relaxed);
    do {
      if (word & AdmissionLayout::kGated) [[unlikely]]
        return AdmissionLayout::kGated;
    } while (!word_.compare_exchange_weak(word, word - lane.delta, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
    return word - lane.delta == AdmissionLayout::kOrphaned ? AdmissionLayout::kOrphaned : 0;
  }
  // The rest of a release GiveBack left to the wait queue's lock: returns the word after.
  uint64_t GiveBackGated(size_t index) {
    const uint64_t delta = lanes_[index].delta;
    return word_.fetch_sub(delta, std::memory_order_acq_rel) - delta;
  }

  // Under the wait queue's lock (the gate set, so no lock-free Take races with it): takes a place
  // in lane `index` if it has fewer than `lane_limit` (its limit, or more when it may borrow) and
  // the global count is below its limit. On success the counts include this call.
  bool TakeGated(size_t index, int lane_limit, int* lane_now, int* global_now);
  void SetGate() { word_.fetch_or(AdmissionLayout::kGated, std::memory_order_acq_rel); }
  void ClearGate() { word_.fetch_and(~AdmissionLayout::kGated, std::memory_order_acq_rel); }

  // Marks the manager object destroyed. Returns true if no call is active, so the state can be
  // freed now; otherwise the last release says when (GiveBack returning kOrphaned, or, for a
  // gated release, the word after GiveBackGated being kOrphaned with or without kGated).
  bool Orphan() {
    return AdmissionLayout::Empty(
        word_.fetch_or(AdmissionLayout::kOrphaned, std::memory_order_acq_rel));
  }

  int GlobalActive() const { return layout_.Global(word_.load(std::memory_order_relaxed)); }
  int LaneActive(size_t index) const {
    return layout_.packed() ? layout_.Lane(word_.load(std::memory_order_relaxed), index)
                            : lanes_[index].active.load(std::memory_order_relaxed);
  }
  int MaxConcurrent() const { return max_concurrent_.load(std::memory_order_relaxed); }

  // `lane` is a lane's number, or lane_count() for a rejection with no lane (unknown_lane,
  // shutting_down).
  void CountRejection(size_t lane, RejectReason reason) {
    rejections_.Increment(RejectionCounter(lane, reason));
  }
  // Every rejection counter, summed over threads; index them with RejectionCounter.
  std::vector<int64_t> RejectionSums() const { return rejections_.Sums(); }
  static size_t RejectionCounter(size_t lane, RejectReason reason) {
    return lane * kRejectReasonCount + static_cast<size_t>(reason);
  }

 private:
  // Raises the high-water mark of the global count to `global_now`.
  [[gnu::always_inline]] void NoteConcurrent(int global_now) {
    for (int seen = max_concurrent_.load(std::memory_order_relaxed);
         global_now > seen &&
         !max_concurrent_.compare_exchange_weak(seen, global_now, std::memory_order_relaxed);) {
    }
  }

  static Refusal Refused(RejectReason reason, int active, int limit, uint64_t word) {
    Refusal f{reason, active, limit};
    f.gated = (word & AdmissionLayout::kGated) != 0;
    return f;
  }

  // Admission where the lane counts do not fit the admission word: reserve a place in the lane,
  // then in the global count, each with a compare-and-swap that only succeeds below its limit; if
  // the global count is full the lane place is handed back. A caller racing on the same lane may
  // be refused for lane_limit in the few nanoseconds that place was reserved, as if it had been
  // taken and released. The counts returned do not include this call.
  std::optional<Refusal> TakeUnpacked(LaneState& lane, int* lane_now, int* global_now) {
    const int global_limit = global_limit_.load(std::memory_order_relaxed);
    if (const uint64_t w = word_.load(std::memory_order_relaxed); w & AdmissionLayout::kGated)
      return Refused(RejectReason::kGlobalLimit, layout_.Global(w), global_limit, w);
    const int lane_limit = lane.Limit();
    int in_lane = lane.active.load(std::memory_order_relaxed);
    do {
      if (in_lane >= lane_limit) return Refusal{RejectReason::kLaneLimit, in_lane, lane_limit};
    } while (!lane.active.compare_exchange_weak(in_lane, in_lane + 1, std::memory_order_acquire,
                                                std::memory_order_relaxed));
    uint64_t word = word_.load(std::memory_order_relaxed);
    do {
      const int global = layout_.Global(word);
      if (word & AdmissionLayout::kGated) [[unlikely]] {
        lane.active.fetch_sub(1, std::memory_order_release);
        return Refused(RejectReason::kGlobalLimit, global, global_limit, word);
      }
      if (global >= global_limit) {
        lane.active.fetch_sub(1, std::memory_order_release);
        return Refusal{RejectReason::kGlobalLimit, global, global_limit};
      }
    } while (!word_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
    *lane_now = in_lane;
    *global_now = layout_.Global(word);
    return std::nullopt;
  }

  const size_t lane_count_;
  const int max_global_limit_;
  std::atomic<int> global_limit_;  // relaxed, as LaneState::limit
  const AdmissionLayout layout_;
  const std::unique_ptr<LaneState[]> lanes_;
  const LaneIndex lane_lookup_;

  // The counts every admission touches, on one cache line of their own: the global and (when
  // they fit) the lane counts, and once the manager object is destroyed the orphan bit, so "last
  // slot released after destruction" is decided by the same atomic operation as the release.
  alignas(64) std::atomic<uint64_t> word_{0};
  std::atomic<int> max_concurrent_{0};

  // Rejections by lane (lane_count: no lane, as for unknown_lane) and reason, counted per thread:
  // under overload every caller is refused on the same lane, and a shared counter would be one
  // cache line bouncing between all their cores.
  ThreadCounters rejections_;

  alignas(64) std::atomic<bool> shutting_down_{false};
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_ADMISSION_H_
