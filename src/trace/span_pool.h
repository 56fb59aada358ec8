// Finished spans' buffers, kept on the thread that made them so that its next spans reuse them.
//
// The batch processor turns spans into SpanData on its own thread and keeps those buffers there;
// this cache serves the spans made into SpanData on the calling thread: for the simple processor
// (or any processor that is handed SpanData), and for a span whose record log filled up. Reusing
// SpanData (its strings and vectors keep their capacity) means such a span allocates nothing once
// the thread is warm.
//
// Thread safety: every function is safe from any thread; each thread has its own cache.
#ifndef LANEGUARD_SRC_TRACE_SPAN_POOL_H_
#define LANEGUARD_SRC_TRACE_SPAN_POOL_H_

#include <vector>

#include "laneguard/trace/trace.h"

namespace laneguard::internal {

// Moves a cached span's buffers into `into` (whose own are freed); if there is none, `into` is
// left as it is. Either way its contents are unspecified: the caller overwrites every field, and
// vectors may hold stale elements to be overwritten in place.
void TakeSpanData(SpanData& into);

// Keeps the spans' buffers in this thread's cache and empties `batch`. Spans that grew unusually
// large (over 8 KiB or 32 attributes or events) are freed instead, and so are spans past
// kMaxPooledSpans, so the cache never pins much memory.
void RecycleSpanData(std::vector<SpanData>& batch);
void RecycleSpanData(SpanData&& span);

inline constexpr size_t kMaxPooledSpans = 16;  // per thread

// False for a span whose buffers are unusually large (over 8 KiB, or 32 attributes or events):
// whoever keeps spans for reuse frees such a one instead, so that one giant attribute does not stay
// pinned.
bool WorthKeeping(const SpanData& span);

// For tests: how many spans this thread's cache holds now.
size_t PooledSpanCount();

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_TRACE_SPAN_POOL_H_
