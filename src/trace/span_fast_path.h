// The worker-call wrappers' way of recording spans: what a worker call records on every call,
// at the least cost on the calling thread. Not public API (user code records through Span's
// methods in laneguard/trace/trace.h); the worker and process layers and the tests include it.
//
// - Literal names and keys: the span keeps their addresses instead of copies.
// - Times the caller already read (every clock read is a TSC read, about 11 ns on a virtual
//   machine): a span started when the manager granted the slot, events stamped with one reading.
// - SpanEditor: several changes under one acquisition of the span's lock.
//
// Thread safety: as Span's (trace.h). A SpanEditor holds the span's lock while it lives.
#ifndef LANEGUARD_SRC_TRACE_SPAN_FAST_PATH_H_
#define LANEGUARD_SRC_TRACE_SPAN_FAST_PATH_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string_view>

#include "laneguard/trace/trace.h"

namespace laneguard::internal {

// A string literal, checked at compile time (the constructor only takes a constant array, so a
// local buffer does not compile): a span keeps its address instead of a copy.
class Literal {
 public:
  constexpr Literal() = default;  // ""
  template <size_t N>
  consteval Literal(const char (&text)[N])  // NOLINT(google-explicit-constructor): "text" reads
      : text_(text), size_(N - 1) {}        // as a Literal wherever one is expected
  constexpr std::string_view view() const { return {text_, size_}; }
  constexpr operator std::string_view() const { return view(); }  // NOLINT(google-explicit-*)

 private:
  const char* text_ = "";
  size_t size_ = 0;
};

// An attribute whose key is a literal; a string value is copied.
struct LiteralAttribute {
  Literal key;
  AttributeValueView value;
};

// Changes to one span under one acquisition of its lock. Each Span method takes the lock; a caller
// that records several things at one moment (the worker-call wrapper: attributes and two events
// when a call starts; two events, the status and the end when it ends) takes it once. The methods
// are Span's, with its rules; on a span that does not record, or has ended, they do nothing.
// The lock is held until the editor is destroyed: keep it short-lived, and do not call the same
// span's own methods meanwhile (they would wait for it). EndAt releases the lock and hands the
// span to the processor; the editor does nothing after it.
class SpanEditor {
 public:
  SpanEditor(const SpanEditor&) = delete;
  SpanEditor& operator=(const SpanEditor&) = delete;
  ~SpanEditor();

  SpanEditor& SetAttribute(std::string_view key, const AttributeValue& value);
  SpanEditor& SetAttributes(std::initializer_list<AttributeView> attributes);
  SpanEditor& AddEventAt(int64_t mono_nanos, std::string_view name,
                         std::initializer_list<AttributeView> attributes = {});
  SpanEditor& AddLiteralEventAt(int64_t mono_nanos, Literal name,
                                std::initializer_list<LiteralAttribute> attributes = {});
  SpanEditor& SetStatus(StatusCode code, std::string_view message = {});
  void EndAt(int64_t mono_nanos);

 private:
  friend class laneguard::Span;
  friend class SpanFastPath;
  explicit SpanEditor(Span::State* state);  // null: nothing to edit
  struct NewSpan {};
  SpanEditor(Span::State* state, NewSpan);  // a recording span no other thread can see yet
  // AddEventAt and AddLiteralEventAt: a name is a string_view or a Literal, an attribute an
  // AttributeView or a LiteralAttribute (the span log keeps literals as addresses).
  template <typename Name, typename Attr>
  SpanEditor& AddAnyEventAt(int64_t mono_nanos, Name name, std::initializer_list<Attr> attributes);
  Span::State* state_;  // null when not recording or ended
};

// Span's and Tracer's fast-path operations. Times are readings of the tracer's clock
// (Clock::MonotonicNanos); a time before the span's start counts as its start.
class SpanFastPath {
 public:
  // Tracer::StartSpan at a time the caller already read: the worker-call wrapper starts a call's
  // span when the manager granted its slot, when the two share a clock.
  static Span StartSpanAt(Tracer& tracer, int64_t start_mono_nanos, std::string_view name,
                          const SpanContext* parent = nullptr, SpanKind kind = SpanKind::kInternal);
  // StartSpanAt, then `fill(SpanEditor&)` records the span's first attributes and events before
  // the span is returned; not called for a span that does not record. No other thread can see the
  // span yet, so the editor takes its lock with a plain store (an atomic exchange there waits for
  // the stores that just wrote the span's start to drain).
  template <typename Fill>
  static Span StartSpanAt(Tracer& tracer, int64_t start_mono_nanos, std::string_view name,
                          const SpanContext* parent, SpanKind kind, const Fill& fill) {
    Span span = StartSpanAt(tracer, start_mono_nanos, name, parent, kind);
    if (span.recording()) {
      SpanEditor edit = EditNew(span);
      fill(edit);
    }
    return span;
  }

  // Several changes under one lock: SpanFastPath::Edit(span).SetAttributes(...).AddEventAt(...).
  static SpanEditor Edit(Span& span);
  static void AddEventAt(Span& span, int64_t mono_nanos, std::string_view name,
                         std::initializer_list<AttributeView> attributes = {});
  // AddEventAt for the events a program records on every call: the name and the keys are
  // literals, so the span keeps their addresses and copies no string but a string value.
  static void AddLiteralEventAt(Span& span, int64_t mono_nanos, Literal name,
                                std::initializer_list<LiteralAttribute> attributes = {});
  static void EndAt(Span& span, int64_t mono_nanos) {
    if (span.state_) span.EndRecording(mono_nanos);
  }
  // When the span started, on the tracer's monotonic clock; 0 for a span that does not record.
  static int64_t StartMonoNanos(const Span& span);

  // What the span holds so far, as its exporter would see it were it to end now (end time 0);
  // nullopt for a span that does not record or has ended. Takes the span's lock: for tests and
  // diagnostics, not for a hot path.
  static std::optional<SpanData> Snapshot(Span& span);

 private:
  // Edit() on a span its tracer has just made, which no other thread can see yet.
  static SpanEditor EditNew(Span& span);
};

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_TRACE_SPAN_FAST_PATH_H_
