#include "core/admission.h"

#include <algorithm>

namespace laneguard::internal {
namespace {

// In the order of the config's map, which is the order of the lanes' numbers.
std::vector<std::string> LaneNames(const Config& config) {
  std::vector<std::string> names;
  for (const auto& [name, limit] : config.lane_concurrency_limits) names.push_back(name);
  return names;
}

}  // namespace

Admission::Admission(const Config& config, int max_global_limit)
    : lane_count_(config.lane_concurrency_limits.size()),
      max_global_limit_(std::max(max_global_limit, config.global_concurrency_limit)),
      global_limit_(config.global_concurrency_limit),
      layout_(lane_count_, max_global_limit_),
      lanes_(new LaneState[lane_count_]),
      lane_lookup_(LaneNames(config)),
      rejections_((lane_count_ + 1) * kRejectReasonCount) {
  size_t i = 0;
  for (const auto& [name, limit] : config.lane_concurrency_limits) {
    lanes_[i].name = name;
    lanes_[i].limit.store(limit, std::memory_order_relaxed);
    lanes_[i].index = i;
    lanes_[i].delta = layout_.Delta(i);
    ++i;
  }
}

void Admission::SetLimits(int global_limit, const std::vector<int>& lane_limits) {
  global_limit_.store(global_limit, std::memory_order_relaxed);
  for (size_t i = 0; i < lane_count_ && i < lane_limits.size(); ++i)
    lanes_[i].limit.store(lane_limits[i], std::memory_order_relaxed);
}

bool Admission::TakeGated(size_t index, int lane_limit, int* lane_now, int* global_now) {
  LaneState& lane = lanes_[index];
  if (layout_.packed()) {
    uint64_t word = word_.load(std::memory_order_relaxed);
    do {
      *lane_now = layout_.Lane(word, index);
      *global_now = layout_.Global(word);
      if (*lane_now >= lane_limit || *global_now >= global_limit()) return false;
    } while (!word_.compare_exchange_weak(word, word + lane.delta, std::memory_order_acq_rel,
                                          std::memory_order_relaxed));
  } else {
    // Only releases race with this (the gate keeps lock-free takes out), and they only lower the
    // counts: checking both and then adding to both never passes a limit.
    *lane_now = lane.active.load(std::memory_order_acquire);
    *global_now = GlobalActive();
    if (*lane_now >= lane_limit || *global_now >= global_limit()) return false;
    lane.active.fetch_add(1, std::memory_order_acq_rel);
    *global_now = layout_.Global(word_.fetch_add(1, std::memory_order_acq_rel));
  }
  ++*lane_now;
  ++*global_now;
  NoteConcurrent(*global_now);
  return true;
}

}  // namespace laneguard::internal
