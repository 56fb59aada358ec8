// Finished spans' buffers, handed back once they have been exported so that new spans reuse them.
//
// A recording span otherwise costs about ten allocations (its name, attribute and event vectors,
// keys and event names past the small-string buffer), and with the batch processor every one of
// them is freed on the export thread, which contends on glibc's arena locks with the threads that
// make spans. Reusing SpanData (its strings and vectors keep their capacity) takes the allocator
// off the worker call's path: in a steady state a sampled-in span allocates nothing.
//
// Thread safety: every function is safe from any thread.
#ifndef LANEGUARD_SRC_TELEMETRY_SPAN_POOL_H_
#define LANEGUARD_SRC_TELEMETRY_SPAN_POOL_H_

#include <vector>

#include "laneguard/trace.h"

namespace laneguard::internal {

// Moves a recycled span's buffers into `into` (whose own are freed); if there is none, `into` is
// left as it is. Either way its contents are unspecified: the caller overwrites every field, and
// vectors may hold stale elements to be overwritten in place.
void TakeSpanData(SpanData& into);

// Gives the spans' buffers back and empties `batch`. Spans that grew unusually large (over 8 KiB
// or 32 attributes or events) are freed instead, so the pool never pins much memory: at most
// kMaxPooledSpans of them shared, and 16 per thread.
void RecycleSpanData(std::vector<SpanData>& batch);
void RecycleSpanData(SpanData&& span);

inline constexpr size_t kMaxPooledSpans = 2048;  // the batch processor's default queue

// For tests: how many spans the shared pool holds now (not counting per-thread caches).
size_t PooledSpanCount();

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_TELEMETRY_SPAN_POOL_H_
