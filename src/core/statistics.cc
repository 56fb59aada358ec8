#include "core/statistics.h"

#include <algorithm>
#include <cmath>

#include "core/admission.h"
#include "core/call_table.h"
#include "laneguard/clock.h"

namespace laneguard::internal {
namespace {

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

// The most recent `capacity` records of all shards, in release order.
std::vector<RingRecord> RecentRecords(CallTable& calls, size_t capacity) {
  std::vector<RingRecord> all;
  for (size_t s = 0; s < calls.shard_count(); ++s) {
    Shard& shard = calls.shard(s);
    SpinLockGuard guard(shard.lock);
    const std::vector<RingRecord>& ring = shard.records.ring();
    all.insert(all.end(), ring.begin(), ring.end());
  }
  std::sort(all.begin(), all.end(), [](const RingRecord& a, const RingRecord& b) {
    return a.end_mono != b.end_mono ? a.end_mono < b.end_mono : a.call_id < b.call_id;
  });
  if (all.size() > capacity) all.erase(all.begin(), all.end() - static_cast<ptrdiff_t>(capacity));
  return all;
}

// Per-lane totals summed over the shards.
std::vector<LaneTotals> SumLaneTotals(CallTable& calls, size_t lane_count) {
  std::vector<LaneTotals> sums(lane_count);
  for (size_t s = 0; s < calls.shard_count(); ++s) {
    Shard& shard = calls.shard(s);
    SpinLockGuard guard(shard.lock);
    for (size_t l = 0; l < lane_count; ++l) sums[l] += shard.records.lanes()[l];
  }
  return sums;
}

// The figures over all lanes: totals, averages and the duration percentiles of the ring.
void FillOverall(const std::vector<LaneTotals>& lane_totals, const std::vector<RingRecord>& records,
                 Statistics* s) {
  LaneTotals all;
  for (const LaneTotals& t : lane_totals) all += t;
  s->total_calls = all.total;
  s->success_count = all.success;
  s->failure_count = all.failure;
  s->timeout_count = all.timeouts;
  s->escalation_count = all.escalations;
  s->overrunning_calls = all.overrunning;
  if (all.total > 0) {
    s->average_duration_ms = all.duration_sum_ms / static_cast<double>(all.total);
    s->average_rss_delta_mb = all.rss_delta_sum_mb / static_cast<double>(all.total);
  }
  std::vector<double> durations;
  durations.reserve(records.size());
  for (const RingRecord& r : records) durations.push_back(r.duration_ms);
  std::sort(durations.begin(), durations.end());
  s->p50_duration_ms = Percentile(durations, 0.50);
  s->p95_duration_ms = Percentile(durations, 0.95);
  s->p99_duration_ms = Percentile(durations, 0.99);
}

// Each lane's figures, and the rejections by lane and by reason.
void FillLanes(const Admission& admission, const std::vector<LaneTotals>& lane_totals,
               const std::vector<RingRecord>& records, Statistics* s) {
  const size_t lane_count = admission.lane_count();
  std::vector<std::vector<double>> lane_durations(lane_count), lane_waits(lane_count);
  for (const RingRecord& r : records) {
    lane_durations[r.lane].push_back(r.duration_ms);
    lane_waits[r.lane].push_back(static_cast<double>(r.queue.wait_ns()) / 1e6);
  }
  const std::vector<int64_t> rejected = admission.RejectionSums();
  int64_t by_reason[kRejectReasonCount] = {};
  for (size_t l = 0; l < lane_count; ++l) {
    const LaneTotals& t = lane_totals[l];
    const LaneState& lane = admission.lane(l);
    LaneStatistics& ls = s->lanes[lane.name];
    ls.total_calls = t.total;
    ls.success_count = t.success;
    ls.failure_count = t.failure;
    ls.timeout_count = t.timeouts;
    ls.average_duration_ms = t.total > 0 ? t.duration_sum_ms / static_cast<double>(t.total) : 0;
    ls.active = admission.LaneActive(l);
    ls.overrunning = t.overrunning;
    ls.limit = lane.Limit();
    for (int reason = 0; reason < kRejectReasonCount; ++reason) {
      const int64_t n = rejected[Admission::RejectionCounter(l, static_cast<RejectReason>(reason))];
      ls.rejections += n;
      by_reason[reason] += n;
    }
    std::sort(lane_durations[l].begin(), lane_durations[l].end());
    ls.p95_duration_ms = Percentile(lane_durations[l], 0.95);
    std::sort(lane_waits[l].begin(), lane_waits[l].end());
    ls.p50_wait_ms = Percentile(lane_waits[l], 0.50);
    ls.p95_wait_ms = Percentile(lane_waits[l], 0.95);
    ls.p99_wait_ms = Percentile(lane_waits[l], 0.99);
  }
  for (int i = 0; i < kRejectReasonCount; ++i) {
    const int64_t n =
        by_reason[i] +
        rejected[Admission::RejectionCounter(lane_count, static_cast<RejectReason>(i))];
    s->rejections_by_reason[std::string(ToString(static_cast<RejectReason>(i)))] = n;
    s->total_rejections += n;
  }
}

}  // namespace

LaneTotals& LaneTotals::operator+=(const LaneTotals& o) {
  overrunning += o.overrunning;
  total += o.total;
  success += o.success;
  failure += o.failure;
  timeouts += o.timeouts;
  escalations += o.escalations;
  duration_sum_ms += o.duration_sum_ms;
  rss_delta_sum_mb += o.rss_delta_sum_mb;
  return *this;
}

WorkerCallMetrics ToPublic(const RingRecord& r, const Admission& admission) {
  WorkerCallMetrics m;
  m.call_id = "call-" + std::to_string(r.call_id);
  m.task_id = r.task_id.view();
  m.lane = admission.lane(r.lane).name;
  m.duration_ms = r.duration_ms;
  m.success = r.success;
  m.error_type = r.error_type;
  m.rss_start_mb = r.rss_start;
  m.rss_end_mb = r.rss_end;
  m.rss_delta_mb = r.rss_end - r.rss_start;
  m.heap_start_mb = r.heap_start;
  m.heap_end_mb = r.heap_end;
  m.heap_delta_mb = r.heap_end - r.heap_start;
  m.concurrent_calls_at_start = r.concurrent_at_start;
  m.concurrent_calls_at_end = r.concurrent_at_end;
  m.timeout_reached = r.timeout_reached;
  m.escalated = r.escalated;
  m.timeout_ms = r.timeout_ms;
  m.timestamp_unix_nanos = r.start_unix;
  m.timestamp = FormatIso8601(r.start_unix);
  m.wait_ms = static_cast<double>(r.queue.wait_ns()) / 1e6;
  m.borrowed = r.queue.borrowed();
  return m;
}

std::vector<WorkerCallMetrics> CollectMetrics(CallTable& calls, const Admission& admission,
                                              size_t capacity) {
  std::vector<WorkerCallMetrics> out;
  for (const RingRecord& r : RecentRecords(calls, capacity)) out.push_back(ToPublic(r, admission));
  return out;
}

Statistics CollectStatistics(CallTable& calls, const Admission& admission, size_t capacity) {
  Statistics s;
  const std::vector<LaneTotals> lane_totals = SumLaneTotals(calls, admission.lane_count());
  s.max_concurrent_calls = admission.MaxConcurrent();
  const std::vector<RingRecord> records = RecentRecords(calls, capacity);
  FillOverall(lane_totals, records, &s);
  FillLanes(admission, lane_totals, records, &s);
  return s;
}

ConcurrencyStatus CollectConcurrencyStatus(CallTable& calls, const Admission& admission) {
  ConcurrencyStatus s;
  const std::vector<LaneTotals> lane_totals = SumLaneTotals(calls, admission.lane_count());
  s.global.active = admission.GlobalActive();
  s.global.limit = admission.global_limit();
  for (size_t l = 0; l < admission.lane_count(); ++l) {
    const LaneState& lane = admission.lane(l);
    s.global.overrunning += lane_totals[l].overrunning;
    const int active = admission.LaneActive(l);
    const int limit = lane.Limit();
    s.lanes[lane.name] = {.active = active,
                          .limit = limit,
                          .overrunning = lane_totals[l].overrunning,
                          .borrowed = std::max(0, active - limit)};
  }
  return s;
}

}  // namespace laneguard::internal
