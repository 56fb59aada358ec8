#include "core/admission.h"

namespace laneguard::internal {
namespace {

// In the order of the config's map, which is the order of the lanes' numbers.
std::vector<std::string> LaneNames(const Config& config) {
  std::vector<std::string> names;
  for (const auto& [name, limit] : config.lane_concurrency_limits) names.push_back(name);
  return names;
}

}  // namespace

Admission::Admission(const Config& config)
    : lane_count_(config.lane_concurrency_limits.size()),
      global_limit_(config.global_concurrency_limit),
      layout_(lane_count_, global_limit_),
      lanes_(new LaneState[lane_count_]),
      lane_lookup_(LaneNames(config)),
      rejections_((lane_count_ + 1) * kRejectReasonCount) {
  size_t i = 0;
  for (const auto& [name, limit] : config.lane_concurrency_limits) {
    lanes_[i].name = name;
    lanes_[i].limit = limit;
    lanes_[i].index = i;
    lanes_[i].delta = layout_.Delta(i);
    ++i;
  }
}

}  // namespace laneguard::internal
