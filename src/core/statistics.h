// Statistics: what the manager remembers of finished calls and how it reports it. Each shard keeps
// its own CallRecords (the most recent records and per-lane totals), so a release writes only its
// own core's cache lines; GetMetrics, GetStatistics and GetConcurrencyStatus sum the shards.
//
// Thread safety: CallRecords is not thread-safe (a Shard guards it with the shard's lock). The
// reading functions take each shard's lock in turn and are safe from any thread.
#ifndef LANEGUARD_SRC_CORE_STATISTICS_H_
#define LANEGUARD_SRC_CORE_STATISTICS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/call_slab.h"
#include "laneguard/metrics.h"

namespace laneguard::internal {

class Admission;
class CallTable;

// Per-lane totals kept by each shard. The only totals there are: the manager's are their sum.
struct LaneTotals {
  int overrunning = 0;
  int64_t total = 0, success = 0, failure = 0, timeouts = 0, escalations = 0;
  double duration_sum_ms = 0, rss_delta_sum_mb = 0;

  LaneTotals& operator+=(const LaneTotals& o);
};

// What the ring keeps per call; strings other than the task id are produced on read.
struct RingRecord {
  uint64_t call_id = 0;
  uint32_t lane = 0;
  bool success = false, timeout_reached = false, escalated = false;
  int concurrent_at_start = 0, concurrent_at_end = 0;
  QueueMark queue;
  double duration_ms = 0;
  double rss_start = 0, rss_end = 0, heap_start = 0, heap_end = 0;
  int64_t timeout_ms = 0;
  int64_t start_unix = 0;
  int64_t end_mono = 0;  // orders records across shards
  TaskId task_id;
  std::string error_type;
};

class CallRecords {
 public:
  void SetLaneCount(size_t lanes) { lanes_.resize(lanes); }

  // The record a release fills next: a new one until the ring holds `capacity`, then the oldest.
  RingRecord& Next(size_t capacity) {
    if (ring_.size() < capacity) {
      // Reserved whole on first use, so filling the ring never reallocates on the hot path.
      if (ring_.empty()) ring_.reserve(capacity);
      ring_.emplace_back();
    }
    RingRecord& r = ring_[next_];
    if (++next_ == capacity) next_ = 0;  // not %: a 64-bit divide
    return r;
  }
  // Adds a filled record to its lane's totals.
  void Count(const RingRecord& r) {
    LaneTotals& t = lanes_[r.lane];
    ++t.total;
    (r.success ? t.success : t.failure) += 1;
    t.timeouts += r.timeout_reached;
    t.escalations += r.escalated;
    t.duration_sum_ms += r.duration_ms;
    t.rss_delta_sum_mb += r.rss_end - r.rss_start;
  }
  // A call of `lane` passed its hard deadline and is still running, or ended after that.
  void AddOverrunning(uint32_t lane) { ++lanes_[lane].overrunning; }
  void RemoveOverrunning(uint32_t lane) { --lanes_[lane].overrunning; }

  const std::vector<RingRecord>& ring() const { return ring_; }
  const std::vector<LaneTotals>& lanes() const { return lanes_; }

 private:
  std::vector<RingRecord> ring_;  // up to metricsCapacity most recent records
  size_t next_ = 0;
  std::vector<LaneTotals> lanes_;
};

// The public form of a record.
WorkerCallMetrics ToPublic(const RingRecord& r, const Admission& admission);

// The manager's reads, over every shard of `calls`. `capacity` is metricsCapacity.
std::vector<WorkerCallMetrics> CollectMetrics(CallTable& calls, const Admission& admission,
                                              size_t capacity);
Statistics CollectStatistics(CallTable& calls, const Admission& admission, size_t capacity);
ConcurrencyStatus CollectConcurrencyStatus(CallTable& calls, const Admission& admission);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_STATISTICS_H_
