// Where the manager keeps its admission counts: the global active count, each lane's active count
// and the "manager destroyed" bit, packed into one 64-bit word when they fit.
//
// Why one word: admission must check the lane limit and the global limit as one atomic step. With
// one word that step is a single compare-and-swap, and a release a single subtraction: two atomic
// read-modify-writes per call instead of four, and one contended cache line instead of two. Each
// count is at most the global limit (a lane limit above it is a config error), so a field of
// bit_width(globalConcurrencyLimit) bits never overflows into its neighbour. The spec's five lanes
// fit with a global limit up to 1,023 (6 fields of 10 bits, and two flag bits); a configuration
// that does not fit (many lanes and a high limit) keeps the lane counts in atomics of their own and
// only the global count here, taking the lane place and then the global one, each with its own
// compare-and-swap.
//
// Limits change live (ResourceBudgetManager::UpdateConfig), but the fields are sized once: for the
// largest global limit the manager may ever have (ManagerOptions::max_global_limit), so a raised
// limit still fits. No count ever exceeds the limit in force when it was taken, so none outgrows
// its field.
//
// Thread safety: a value computed once at construction and only read afterwards.
#ifndef LANEGUARD_SRC_CORE_ADMISSION_WORD_H_
#define LANEGUARD_SRC_CORE_ADMISSION_WORD_H_

#include <bit>
#include <cstddef>
#include <cstdint>

namespace laneguard::internal {

class AdmissionLayout {
 public:
  // Set once the manager object is destroyed; the last release then frees the shared state.
  static constexpr uint64_t kOrphaned = uint64_t{1} << 63;
  // Set while admission must go through the wait queue's lock (requests are waiting, or quotas or
  // lane lending are configured): the lock-free path then refuses to take a place, so nobody takes
  // one ahead of a waiter, and a release that sees it hands its place on under that lock. Being
  // in the same word as the counts, a waiter that sets it before its last look at the counts can
  // not miss a release: the release either came before (and the look sees its place) or after
  // (and sees the bit).
  static constexpr uint64_t kGated = uint64_t{1} << 62;
  static constexpr uint64_t kFlags = kOrphaned | kGated;

  // `max_global_limit`: the largest global limit the counts must ever hold.
  AdmissionLayout(size_t lane_count, int max_global_limit) {
    const auto width =
        static_cast<unsigned>(std::bit_width(static_cast<unsigned>(max_global_limit)));
    if (width > 0 && (lane_count + 1) * width <= 62) {
      width_ = width;
      global_mask_ = (uint64_t{1} << width) - 1;
    }
    gated_global_mask_ = global_mask_ | kGated;
  }

  // True when the lane counts live in the word too.
  bool packed() const { return width_ != 0; }
  // What one call adds to the word for lane `lane`: its lane field's unit (when packed) plus one
  // in the global field.
  uint64_t Delta(size_t lane) const { return packed() ? (uint64_t{1} << Shift(lane)) + 1 : 1; }
  int Global(uint64_t word) const { return static_cast<int>(word & global_mask_); }
  // The global count, or a value above any limit when the gate is set (kGated is kept).
  uint64_t GatedGlobal(uint64_t word) const { return word & gated_global_mask_; }
  // Precondition: packed().
  int Lane(uint64_t word, size_t lane) const {
    return static_cast<int>((word >> Shift(lane)) & global_mask_);
  }
  // True when `word` holds no active call at all (whatever the flags).
  static bool Empty(uint64_t word) { return (word & ~kFlags) == 0; }

 private:
  unsigned Shift(size_t lane) const { return static_cast<unsigned>(lane + 1) * width_; }

  unsigned width_ = 0;
  uint64_t global_mask_ = ~kFlags;  // unpacked: every bit but the flags counts
  uint64_t gated_global_mask_ = 0;
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_ADMISSION_WORD_H_
