#include "telemetry/span_pool.h"

#include <mutex>
#include <utility>

namespace laneguard::internal {
namespace {

// A span past these is not kept: one giant attribute must not stay pinned in the pool. With them
// the pool holds at most kMaxPooledSpans x 8 KiB (a worker call's span is about 1 KiB).
constexpr size_t kMaxPooledElements = 32;
constexpr size_t kMaxPooledSpanBytes = size_t{8} * 1024;
// Spans a thread takes from the shared pool at once (the lock is taken once per this many); a
// thread keeps at most twice this many.
constexpr size_t kTakeChunk = 8;

struct SharedPool {
  std::mutex mu;
  std::vector<SpanData> spans;
};

SharedPool& Shared() {
  static auto* pool = new SharedPool;  // never destroyed: export threads may recycle at exit
  return *pool;
}

// Adds the heap bytes `attributes` holds to `bytes`; false once past the budget or the count.
bool AddBytes(const std::vector<Attribute>& attributes, size_t& bytes) {
  if (attributes.capacity() > kMaxPooledElements) return false;
  bytes += attributes.capacity() * sizeof(Attribute);
  for (const Attribute& a : attributes) {
    bytes += a.key.capacity();
    if (const auto* s = std::get_if<std::string>(&a.value)) bytes += s->capacity();
  }
  return bytes <= kMaxPooledSpanBytes;
}

bool Small(const SpanData& span) {
  if (span.events.capacity() > kMaxPooledElements ||
      span.compact_events.capacity() > kMaxPooledElements)
    return false;
  size_t bytes = span.name.capacity() + span.status_message.capacity() +
                 span.events.capacity() * sizeof(SpanEvent) +
                 span.compact_events.capacity() * sizeof(CompactEvent);
  if (!AddBytes(span.attributes, bytes)) return false;
  for (const SpanEvent& e : span.events) {
    bytes += e.name.capacity();
    if (!AddBytes(e.attributes, bytes)) return false;
  }
  return true;
}

// This thread's spans: taken from the shared pool a chunk at a time, and where spans ended and
// were exported on the same thread (no processor, the simple one) they come straight back here.
// Null once the thread's destructors have destroyed it (a span ended by a later thread_local's
// destructor): such spans go to the shared pool or are freed.
std::vector<SpanData>* Cache() {
  thread_local bool gone = false;  // trivially destructible: readable to the thread's end
  struct Holder {
    std::vector<SpanData> spans;
    ~Holder() { gone = true; }
  };
  if (gone) return nullptr;
  thread_local Holder holder;
  return &holder.spans;
}

}  // namespace

void TakeSpanData(SpanData& into) {
  std::vector<SpanData>* cache_or_null = Cache();
  if (cache_or_null == nullptr) return;
  std::vector<SpanData>& cache = *cache_or_null;
  if (cache.empty()) {
    SharedPool& pool = Shared();
    std::lock_guard<std::mutex> lock(pool.mu);
    const size_t n = std::min(kTakeChunk, pool.spans.size());
    for (size_t i = 0; i < n; ++i) {
      cache.push_back(std::move(pool.spans.back()));
      pool.spans.pop_back();
    }
  }
  if (cache.empty()) return;
  into = std::move(cache.back());
  cache.pop_back();
}

void RecycleSpanData(std::vector<SpanData>& batch) {
  // Sized outside the lock; the moves under it only swap pointers.
  size_t keep = 0;
  for (SpanData& span : batch) {
    if (Small(span)) {
      if (&span != &batch[keep]) batch[keep] = std::move(span);
      ++keep;
    }
  }
  batch.resize(keep);  // frees the large ones here, not under the lock
  {
    SharedPool& pool = Shared();
    std::lock_guard<std::mutex> lock(pool.mu);
    const size_t room = kMaxPooledSpans - std::min(kMaxPooledSpans, pool.spans.size());
    size_t n = std::min(room, batch.size());
    if (pool.spans.capacity() < pool.spans.size() + n) {
      try {
        pool.spans.reserve(kMaxPooledSpans);
      } catch (...) {
        n = 0;  // out of memory: the spans are simply freed
      }
    }
    for (size_t i = 0; i < n; ++i) pool.spans.push_back(std::move(batch[i]));
  }
  batch.clear();
}

void RecycleSpanData(SpanData&& span) {
  std::vector<SpanData>* cache = Cache();
  if (cache == nullptr || cache->size() >= 2 * kTakeChunk || !Small(span)) return;
  try {
    cache->push_back(std::move(span));
  } catch (...) {  // out of memory: the span is simply freed
  }
}

size_t PooledSpanCount() {
  SharedPool& pool = Shared();
  std::lock_guard<std::mutex> lock(pool.mu);
  return pool.spans.size();
}

}  // namespace laneguard::internal
