// A span as the thread that records it keeps it: a fixed-size header and a log of what was set on
// the span, in order. Whoever exports the span turns the log into SpanData (ReplaySpanRecord).
//
// Why a log: building SpanData in place cost a worker call's thread about 2,000 instructions per
// span (strings overwritten, variants assigned, limits checked, a pooled SpanData taken and
// given back), and the SpanData's heap buffers then crossed to the export thread and back. An
// operation appended to the log is a few bytes copied (a literal name or key is a pointer), and
// ending the span copies the used bytes once. OpenTelemetry's rules (the limits, an overwritten
// key, a final status) are applied when the log is replayed, in the order the operations
// happened, so the SpanData is the one building it in place would have made.
//
// Thread safety: plain values and functions; the span's own lock orders appends.
#ifndef LANEGUARD_SRC_TRACE_SPAN_RECORD_H_
#define LANEGUARD_SRC_TRACE_SPAN_RECORD_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <type_traits>

#include "laneguard/trace/trace.h"
#include "trace/span_fast_path.h"

namespace laneguard::internal {

struct SpanRecord {
  // A worker call's span (name, taskId, lane, four events, status) takes about 290 bytes of log;
  // the whole record is 512. A span whose log fills up is built as SpanData from then on (see
  // Span::State).
  static constexpr size_t kLogCapacity = 440;

  TraceId trace_id;
  SpanId span_id;
  SpanId parent_span_id;
  SpanKind kind = SpanKind::kInternal;
  // The tracer's SpanLimits, for the replay (past UINT32_MAX they are as good as unlimited).
  uint32_t max_attributes = 0;
  uint32_t max_events = 0;
  uint32_t max_attributes_per_event = 0;
  uint32_t size = 0;  // bytes of `log` in use
  int64_t start_unix_nanos = 0;
  int64_t end_unix_nanos = 0;
  // Left uninitialized: only [0, size) is ever read, and a queue of records must not zero 440
  // bytes per span.
  std::byte log[kLogCapacity];  // NOLINT(cppcoreguidelines-pro-type-member-init)
};
static_assert(sizeof(SpanRecord) == 512);
static_assert(std::is_trivially_copyable_v<SpanRecord>);

// Copies the header and the log's used bytes only.
inline void CopySpanRecord(const SpanRecord& from, SpanRecord& to) {
  std::memcpy(static_cast<void*>(&to), &from, offsetof(SpanRecord, log) + from.size);
}

// ---- the log's operations ----------------------------------------------------------------------
//
// Each is written twice, first to a LogSize to learn its length, then to a LogWriter at its
// place: one encoder per operation, so the sizes cannot drift from the bytes. Layout (host byte
// order, unaligned): an op byte, then
//   kName:      text
//   kAttribute: text key, value
//   kEvent:     int64 time, text name, uint32 count, count x (text key, value)
//   kStatus:    uint8 code, text message
// A text is a uint32 (length << 1 | is_literal) followed by the bytes, or for a literal by its
// address (the program's constant outlives every span). A value is a uint8 type (the variant's
// index) and a bool byte, an int64, a double or a text.

// Sinks are passed and returned by value: a writer's position then stays in a register. (Held by
// reference, it would be reloaded after every byte store, which may alias it: a chain of
// store-to-load forwards, about 5 cycles per field.)
class LogSize {
 public:
  LogSize Put(const void*, size_t n) const { return LogSize(size_ + n); }
  LogSize PutText(const char*, size_t n) const { return LogSize(size_ + n); }
  size_t size() const { return size_; }
  LogSize() = default;

 private:
  explicit LogSize(size_t size) : size_(size) {}
  size_t size_ = 0;
};

class LogWriter {
 public:
  explicit LogWriter(std::byte* at) : at_(at) {}
  LogWriter Put(const void* bytes, size_t n) const {
    std::memcpy(at_, bytes, n);
    return LogWriter(at_ + n);
  }
  // Most texts (names, keys, ids) are short: copied inline as two overlapping words each way,
  // where a call to memcpy and its dispatch on the size cost more than the copy.
  LogWriter PutText(const char* text, size_t n) const {
    if (n >= 8 && n <= 32) {
      CopyOverlapping<8>(text, n > 16 ? 16 : n);
      if (n > 16) CopyOverlapping<8>(text + n - 16, 16, n - 16);
    } else if (n >= 4 && n < 8) {
      CopyOverlapping<4>(text, n);
    } else if (n < 4) {
      for (size_t i = 0; i < n; ++i) at_[i] = static_cast<std::byte>(text[i]);
    } else {
      std::memcpy(at_, text, n);
    }
    return LogWriter(at_ + n);
  }

 private:
  // Copies n bytes (W <= n <= 2W) from `from` to at_ + offset as two words of W bytes.
  template <size_t W>
  void CopyOverlapping(const char* from, size_t n, size_t offset = 0) const {
    unsigned char head[W];
    unsigned char tail[W];
    std::memcpy(head, from, W);
    std::memcpy(tail, from + n - W, W);
    std::memcpy(at_ + offset, head, W);
    std::memcpy(at_ + offset + n - W, tail, W);
  }
  std::byte* at_;
};

enum class LogOp : uint8_t { kName, kAttribute, kEvent, kStatus };

template <typename Sink, typename T>
Sink PutPod(Sink sink, const T& value) {
  static_assert(std::is_trivially_copyable_v<T>);
  return sink.Put(&value, sizeof value);
}

template <typename Sink>
Sink PutText(Sink sink, std::string_view text) {
  sink = PutPod(sink, static_cast<uint32_t>(text.size() << 1));
  return sink.PutText(text.data(), text.size());
}

template <typename Sink>
Sink PutText(Sink sink, Literal text) {
  sink = PutPod(sink, static_cast<uint32_t>(text.view().size() << 1 | 1));
  return PutPod(sink, text.view().data());
}

template <typename Sink>
Sink PutValue(Sink sink, const AttributeValueView& value) {
  sink = PutPod(sink, static_cast<uint8_t>(value.index()));
  if (const auto* text = std::get_if<std::string_view>(&value)) return PutText(sink, *text);
  if (const auto* i = std::get_if<int64_t>(&value)) return PutPod(sink, *i);
  if (const auto* d = std::get_if<double>(&value)) return PutPod(sink, *d);
  return PutPod(sink, static_cast<uint8_t>(*std::get_if<bool>(&value)));
}

template <typename Sink>
Sink PutValue(Sink sink, const AttributeValue& value) {
  if (const auto* text = std::get_if<std::string>(&value))
    return PutValue(sink, AttributeValueView(std::string_view(*text)));
  if (const auto* i = std::get_if<int64_t>(&value)) return PutValue(sink, AttributeValueView(*i));
  if (const auto* d = std::get_if<double>(&value)) return PutValue(sink, AttributeValueView(*d));
  return PutValue(sink, AttributeValueView(*std::get_if<bool>(&value)));
}

template <typename Sink, typename Text>
Sink PutName(Sink sink, Text name) {
  return PutText(PutPod(sink, LogOp::kName), name);
}

template <typename Sink, typename Value>
Sink PutAttribute(Sink sink, std::string_view key, const Value& value) {
  return PutValue(PutText(PutPod(sink, LogOp::kAttribute), key), value);
}

// `Attr` is Attribute, AttributeView or LiteralAttribute (whose keys are written as literals).
template <typename Sink, typename Text, typename Attr>
Sink PutEvent(Sink sink, int64_t time_unix_nanos, Text name, const Attr* attributes, size_t count) {
  sink = PutPod(sink, LogOp::kEvent);
  sink = PutPod(sink, time_unix_nanos);
  sink = PutText(sink, name);
  sink = PutPod(sink, static_cast<uint32_t>(count));
  for (size_t i = 0; i < count; ++i) {
    sink = PutText(sink, attributes[i].key);
    sink = PutValue(sink, attributes[i].value);
  }
  return sink;
}

template <typename Sink>
Sink PutStatus(Sink sink, StatusCode code, std::string_view message) {
  return PutText(PutPod(PutPod(sink, LogOp::kStatus), static_cast<uint8_t>(code)), message);
}

// ---- replay ------------------------------------------------------------------------------------

// Applies log operations to a SpanData with OpenTelemetry's rules, writing over the elements a
// recycled SpanData holds (their buffers are reused) and trimming the rest in Finish().
class SpanBuilder {
 public:
  // Starts on `data` (kept by pointer until Finish) with the record's limits and header.
  void Reset(SpanData& data, const SpanRecord& header);
  // Applies `size` bytes of operations, as the Put* functions wrote them.
  void Apply(const std::byte* log, size_t size);
  // Trims what a recycled SpanData left behind and sets the header's end time.
  void Finish(const SpanRecord& header);
  // What this builder has built so far, copied into `copy`, and a builder that goes on there
  // (a snapshot of a span being recorded, which this builder keeps building).
  SpanBuilder ForkTo(SpanData& copy) const;

 private:
  void SetAttribute(std::string_view key, const AttributeValueView& value);
  SpanData* data_ = nullptr;
  size_t attributes_used_ = 0;
  size_t events_used_ = 0;
  uint32_t max_attributes_ = 0;
  uint32_t max_events_ = 0;
  uint32_t max_attributes_per_event_ = 0;
};

// The whole record into `out`, whose buffers may be a recycled span's.
void ReplaySpanRecord(const SpanRecord& record, SpanData& out);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_TRACE_SPAN_RECORD_H_
