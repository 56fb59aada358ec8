#include "trace/span_pool.h"

#include <utility>

namespace laneguard::internal {
namespace {

// A span past these is not kept: one giant attribute must not stay pinned in the cache. With them
// a thread holds at most kMaxPooledSpans x 8 KiB (a worker call's span is about 1 KiB).
constexpr size_t kMaxPooledElements = 32;
constexpr size_t kMaxPooledSpanBytes = size_t{8} * 1024;

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

}  // namespace

bool WorthKeeping(const SpanData& span) {
  if (span.events.capacity() > kMaxPooledElements) return false;
  size_t bytes = span.name.capacity() + span.status_message.capacity() +
                 span.events.capacity() * sizeof(SpanEvent);
  if (!AddBytes(span.attributes, bytes)) return false;
  for (const SpanEvent& e : span.events) {
    bytes += e.name.capacity();
    if (!AddBytes(e.attributes, bytes)) return false;
  }
  return true;
}

namespace {

// Null once the thread's destructors have destroyed it (a span ended by a later thread_local's
// destructor): such spans are freed.
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
  std::vector<SpanData>* cache = Cache();
  if (cache == nullptr || cache->empty()) return;
  into = std::move(cache->back());
  cache->pop_back();
}

void RecycleSpanData(std::vector<SpanData>& batch) {
  for (SpanData& span : batch) RecycleSpanData(std::move(span));
  batch.clear();
}

void RecycleSpanData(SpanData&& span) {
  std::vector<SpanData>* cache = Cache();
  if (cache == nullptr || cache->size() >= kMaxPooledSpans || !WorthKeeping(span)) return;
  try {
    cache->reserve(kMaxPooledSpans);
    cache->push_back(std::move(span));
  } catch (...) {  // out of memory: the span is simply freed
  }
}

size_t PooledSpanCount() {
  std::vector<SpanData>* cache = Cache();
  return cache == nullptr ? 0 : cache->size();
}

}  // namespace laneguard::internal
