#include "telemetry/span_pool.h"

#include <mutex>
#include <utility>

namespace laneguard::internal {
namespace {

// A span past these is not kept: one giant attribute must not stay pinned in the pool.
constexpr size_t kMaxPooledElements = 32;
constexpr size_t kMaxPooledStringBytes = 512;
// Spans a thread takes from the shared pool at once, so the lock is taken once per this many.
constexpr size_t kTakeChunk = 32;

struct SharedPool {
  std::mutex mu;
  std::vector<SpanData> spans;
};

SharedPool& Shared() {
  static auto* pool = new SharedPool;  // never destroyed: export threads may recycle at exit
  return *pool;
}

bool Small(const std::string& s) { return s.capacity() <= kMaxPooledStringBytes; }

bool Small(const std::vector<Attribute>& attributes) {
  if (attributes.capacity() > kMaxPooledElements) return false;
  for (const Attribute& a : attributes) {
    if (!Small(a.key)) return false;
    if (const auto* s = std::get_if<std::string>(&a.value); s != nullptr && !Small(*s))
      return false;
  }
  return true;
}

bool Small(const SpanData& span) {
  if (!Small(span.name) || !Small(span.status_message) || !Small(span.attributes) ||
      span.events.capacity() > kMaxPooledElements)
    return false;
  for (const SpanEvent& e : span.events)
    if (!Small(e.name) || !Small(e.attributes)) return false;
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

SpanData TakeSpanData() {
  std::vector<SpanData>* cache_or_null = Cache();
  if (cache_or_null == nullptr) return {};
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
  if (cache.empty()) return {};
  SpanData span = std::move(cache.back());
  cache.pop_back();
  return span;
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
