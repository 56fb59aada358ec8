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

// Recycled batches are kept whole, so that the export thread hands one over by moving a vector,
// not span by span under the lock the worker calls' threads take spans under (they slept on it
// while a 512-span batch was moved in). Takers move a few spans out of the last batch; an
// emptied batch vector goes back to the export thread as the next batch's storage. Batches of
// fewer than kTakeChunk spans (the simple processor recycles one at a time) are moved into
// `loose` span by span instead, so that their vectors stay with their owners.
struct SharedPool {
  std::mutex mu;
  std::vector<SpanData> loose;
  std::vector<std::vector<SpanData>> batches;  // none empty
  std::vector<std::vector<SpanData>> empties;  // at most kMaxEmpties, each empty with capacity
  size_t count = 0;                            // spans in `loose` and `batches`
};
constexpr size_t kMaxEmpties = 4;

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
    cache.reserve(2 * kTakeChunk);  // once per thread; no allocation under the lock
    std::vector<SpanData> emptied;  // freed outside the lock when there is no room to keep it
    SharedPool& pool = Shared();
    std::lock_guard<std::mutex> lock(pool.mu);
    while (cache.size() < kTakeChunk && !pool.loose.empty()) {
      cache.push_back(std::move(pool.loose.back()));
      pool.loose.pop_back();
      --pool.count;
    }
    while (cache.size() < kTakeChunk && !pool.batches.empty()) {
      std::vector<SpanData>& last = pool.batches.back();
      while (cache.size() < kTakeChunk && !last.empty()) {
        cache.push_back(std::move(last.back()));
        last.pop_back();
        --pool.count;
      }
      if (!last.empty()) break;
      // Kept on top when there is no room for more: the next recycled batch gets the newest.
      if (pool.empties.size() < std::min(kMaxEmpties, pool.empties.capacity())) {
        pool.empties.push_back(std::move(last));
      } else if (!pool.empties.empty()) {
        emptied = std::exchange(pool.empties.back(), std::move(last));
      } else {
        emptied = std::move(last);
      }
      pool.batches.pop_back();
    }
  }
  if (cache.empty()) return;
  into = std::move(cache.back());
  cache.pop_back();
}

void RecycleSpanData(std::vector<SpanData>& batch) {
  // Sized outside the lock.
  size_t keep = 0;
  for (SpanData& span : batch) {
    if (Small(span)) {
      if (&span != &batch[keep]) batch[keep] = std::move(span);
      ++keep;
    }
  }
  batch.resize(keep);  // frees the large ones here, not under the lock
  const size_t n = batch.size();
  if (n == 0) return;
  SharedPool& pool = Shared();
  std::vector<SpanData> next;  // an emptied batch vector, for the caller's next batch
  bool whole = false;
  {
    std::lock_guard<std::mutex> lock(pool.mu);
    try {
      if (pool.batches.capacity() == 0) {  // once: later pushes cannot allocate
        pool.loose.reserve(kMaxPooledSpans);
        pool.batches.reserve(kMaxPooledSpans / kTakeChunk);  // batches hold kTakeChunk at least
        pool.empties.reserve(kMaxEmpties);
      }
      const size_t room = kMaxPooledSpans - pool.count;
      if (n >= kTakeChunk && n <= room) {
        pool.batches.push_back(std::move(batch));
        pool.count += n;
        whole = true;
        if (!pool.empties.empty()) {
          next = std::move(pool.empties.back());
          pool.empties.pop_back();
        }
      } else {  // a few spans, or the pool nearly full
        const size_t moved = std::min(n, room);
        for (size_t i = 0; i < moved; ++i) pool.loose.push_back(std::move(batch[i]));
        pool.count += moved;
      }
    } catch (...) {  // out of memory reserving: the spans are simply freed, below
    }
  }
  if (whole) {
    batch = std::move(next);
  } else {
    batch.clear();  // frees what the pool had no room for, outside the lock
  }
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
  return pool.count;
}

}  // namespace laneguard::internal
