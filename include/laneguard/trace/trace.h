// Spans in OpenTelemetry's data model: ids, W3C trace context, sampling, limits, processors and
// exporters. Every worker call gets a span named "worker_call:<lane>"; see worker.h.
//
//   laneguard::TracerOptions o;
//   o.resource = {.service_name = "orchestrator", .service_version = "1.0.0",
//                 .deployment_environment = "production"};
//   o.processor = std::make_shared<laneguard::BatchSpanProcessor>(
//       laneguard::NewJsonLinesSpanExporter(file));
//   laneguard::Tracer tracer(std::move(o));
//   laneguard::Span span = tracer.StartSpan("worker_call:tool_call", &parent_context);
//   span.AddEvent("acquired_slot", {{"globalConcurrency", int64_t{4}}});
//   span.End();
//
// A recording span keeps what is set on it as a compact log (src/trace/span_record.h); the
// batch processor turns it into SpanData on its export thread, applying the limits and rules
// below there, in the order things were recorded. The events then go in time order (see
// SpanData::events).
//
// Thread safety: Tracer, the processors and the exporters are thread-safe. A Span may be used from
// several threads (events from the timer thread land on a span the caller is also writing); its
// methods lock a per-span lock, taken only by recording spans (the worker-call wrappers take it
// once for several changes). SpanContext, SpanData and the id types are plain values.
#ifndef LANEGUARD_TRACE_TRACE_H_
#define LANEGUARD_TRACE_TRACE_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "laneguard/clock.h"
#include "laneguard/internal/mutex.h"
#include "laneguard/result.h"

namespace laneguard {

namespace internal {
struct SpanRecord;
// The worker wrappers' fast path (src/trace/span_fast_path.h): literal events, several changes
// under one lock, times the caller read.
class SpanEditor;
class SpanFastPath;
}  // namespace internal

// ---- ids and context ----------------------------------------------------------------------------

struct TraceId {
  std::array<uint8_t, 16> bytes{};
  bool valid() const;       // not all zero
  std::string Hex() const;  // 32 lower-case hex digits
  bool operator==(const TraceId&) const = default;
};
struct SpanId {
  std::array<uint8_t, 8> bytes{};
  bool valid() const;       // not all zero
  std::string Hex() const;  // 16 lower-case hex digits
  bool operator==(const SpanId&) const = default;
};

// Random ids from a per-thread xoshiro256** generator seeded from std::random_device: no lock, no
// syscall after the first id on a thread. Never all-zero.
TraceId NewTraceId();
SpanId NewSpanId();

// What crosses process boundaries: W3C trace context.
struct SpanContext {
  TraceId trace_id;
  SpanId span_id;
  bool sampled = false;  // trace-flags bit 0
  bool remote = false;   // parsed from a traceparent rather than created here
  bool valid() const { return trace_id.valid() && span_id.valid(); }
  bool operator==(const SpanContext&) const = default;
};

// Strict W3C traceparent parsing ("00-<32 hex>-<16 hex>-<2 hex>"): lower-case hex only, exact
// lengths and dashes, version "ff" refused, all-zero trace or span id refused. Versions above 00
// are accepted when the header is at least as long as version 00's and, if longer, continues with
// '-' (the spec's forward compatibility). Returns nullopt for anything else: the caller then starts
// a new trace.
std::optional<SpanContext> ParseTraceparent(std::string_view header);
// "00-<trace>-<span>-01" or "-00". An invalid context formats with its zero ids, which
// ParseTraceparent refuses: check context.valid() before sending one.
std::string FormatTraceparent(const SpanContext& context);

// ---- sampling -----------------------------------------------------------------------------------

// Parent-based ratio sampling. With a valid parent, the parent's sampled flag decides. Otherwise
// the decision is a deterministic function of the trace id (the same id always gets the same
// answer, on every host): the last 8 bytes read big-endian, shifted right by one, compared below
// rate x 2^63 -- the rule of OpenTelemetry's TraceIdRatioBased sampler.
//
// With parent_based false (OpenTelemetry's plain traceidratio, always_on and always_off samplers)
// the parent is ignored and every span decides by its trace id, as a root span does.
class Sampler {
 public:
  explicit Sampler(double rate, bool parent_based = true);  // rate clamped to [0, 1]
  bool ShouldSample(const TraceId& trace_id, const SpanContext* parent) const;
  double rate() const { return rate_; }
  bool parent_based() const { return parent_based_; }

 private:
  double rate_;
  uint64_t bound_;
  bool parent_based_;
};

// ---- span data ----------------------------------------------------------------------------------

using AttributeValue = std::variant<bool, int64_t, double, std::string>;
struct Attribute {
  std::string key;
  AttributeValue value;
};
using Attributes = std::vector<Attribute>;

// A borrowed attribute, for Span::AddEvent: the key and a string value are copied into the span,
// so an event recorded this way costs no allocation once the span's buffers are warm. Only valid
// for the duration of the call.
using AttributeValueView = std::variant<bool, int64_t, double, std::string_view>;
struct AttributeView {
  std::string_view key;
  AttributeValueView value;
};

struct SpanEvent {
  std::string name;
  int64_t time_unix_nanos = 0;
  Attributes attributes;
  uint32_t dropped_attributes_count = 0;  // past SpanLimits::max_attributes_per_event
};

enum class SpanKind { kInternal = 1, kServer = 2, kClient = 3, kProducer = 4, kConsumer = 5 };
enum class StatusCode { kUnset = 0, kOk = 1, kError = 2 };

// A finished span, as processors and exporters see it.
struct SpanData {
  std::string name;
  TraceId trace_id;
  SpanId span_id;
  SpanId parent_span_id;  // all zero for a root span
  SpanKind kind = SpanKind::kInternal;
  int64_t start_unix_nanos = 0;
  int64_t end_unix_nanos = 0;
  Attributes attributes;
  // In time order; events at the same time in the order they were recorded. (An event given an
  // earlier time, such as a worker call's timeout event, stamped with its deadline, takes its
  // place by time.) Past max_events, the first ones recorded are kept.
  std::vector<SpanEvent> events;
  StatusCode status = StatusCode::kUnset;
  std::string status_message;
  uint32_t dropped_attributes_count = 0;
  uint32_t dropped_events_count = 0;
};

// OpenTelemetry's default span limits.
struct SpanLimits {
  size_t max_attributes = 128;
  size_t max_events = 128;
  size_t max_attributes_per_event = 128;
};

// The resource every span of a tracer belongs to (the spec's service/version/environment).
struct Resource {
  std::string service_name = "laneguard";
  std::string service_version;
  std::string deployment_environment;
  Attributes extra;  // further resource attributes
};

// ---- exporters and processors ------------------------------------------------------------------

// What became of one exported batch, so that a batch processor can count every item that did not
// get through under its reason. `partially_rejected` applies to kSuccess only: the receiver took
// the request but refused that many of its items (OTLP's partialSuccess).
struct ExportResult {
  enum class Code {
    kSuccess,
    kFailed,            // not delivered, no finer reason known (a plain `false` from Export)
    kRejected,          // the receiver refused the request and retrying cannot help (4xx)
    kRetriesExhausted,  // retryable failures until the attempts or the export deadline ran out
    kCancelled,         // the exporter was shut down while the batch was in flight
  };
  ExportResult() = default;
  // Not explicit: `return {Code::kFailed};` reads as what it is.
  ExportResult(Code c, uint64_t rejected = 0, uint64_t delivered_items = 0,  // NOLINT
               std::string why = {})
      : code(c), partially_rejected(rejected), delivered(delivered_items), error(std::move(why)) {}
  Code code = Code::kSuccess;
  uint64_t partially_rejected = 0;
  // For a failure: how many items of the batch got through before it (a file that filled up
  // mid-batch keeps its whole lines); they count as exported, the rest under the code's reason.
  uint64_t delivered = 0;
  // Why the batch (or the last attempt before a cancel) failed, for people: "No space left on
  // device", "HTTP 503", "Couldn't connect to server". May be empty.
  std::string error;
};

class SpanExporter {
 public:
  virtual ~SpanExporter() = default;
  // Returns false if the batch was not delivered. Called from one thread at a time.
  virtual bool Export(const std::vector<SpanData>& batch, const Resource& resource) = 0;
  // Export with the reason of a failure. Exporters that know more than delivered/not delivered
  // override it; the batch processor calls this one.
  virtual ExportResult ExportWithResult(const std::vector<SpanData>& batch,
                                        const Resource& resource) {
    return {Export(batch, resource) ? ExportResult::Code::kSuccess : ExportResult::Code::kFailed};
  }
  // May be called while Export runs on another thread (a batch processor whose shutdown timed
  // out): an exporter that can, abandons the export in flight and fails later ones at once.
  virtual void Shutdown() {}
};

// Keeps everything it is given; for tests.
class InMemorySpanExporter final : public SpanExporter {
 public:
  bool Export(const std::vector<SpanData>& batch, const Resource& resource) override;
  std::vector<SpanData> spans() const;
  void Clear();

 private:
  mutable internal::Mutex mu_;
  std::vector<SpanData> spans_ GUARDED_BY(mu_);
};

// One JSON object per span per line, with OTLP/JSON field names (traceId and spanId as lower-case
// hex, kind and status code as integers, times as decimal strings of Unix nanoseconds, attributes
// as [{"key": ..., "value": {"stringValue" | "intValue" | "doubleValue" | "boolValue": ...}}]) and
// the resource's attributes under "resource".
std::unique_ptr<SpanExporter> NewJsonLinesSpanExporter(std::FILE* stream);  // caller keeps it open
Result<std::unique_ptr<SpanExporter>> NewJsonLinesFileSpanExporter(
    const std::string& path);  // appends
std::unique_ptr<SpanExporter> NewStdoutSpanExporter();

// Receives ended spans. OnEnd must not block for long: it runs on the worker call's thread.
class SpanProcessor {
 public:
  virtual ~SpanProcessor() = default;
  virtual void OnEnd(SpanData&& span) = 0;
  // Exports everything queued so far; returns false if that did not finish within the timeout.
  virtual bool ForceFlush(std::chrono::milliseconds timeout = std::chrono::seconds(30)) = 0;
  // Flushes and stops; later spans are dropped (and counted). Idempotent.
  virtual void Shutdown() = 0;
  virtual void SetResource(const Resource& resource) = 0;

 private:
  friend class internal::SpanEditor;
  friend class BatchSpanProcessor;
  using RecordSink = void (*)(SpanProcessor& self, const internal::SpanRecord& record);
  // The tracer hands most spans over in the form it recorded them in (see span_record.h). With no
  // sink it turns the record into SpanData and calls OnEnd; laneguard's batch processor sets one
  // that queues the record as it is, for its export thread to make the SpanData. A private
  // pointer, not a virtual, so that nothing outside laneguard can take the record:
  // internal::SpanRecord may change in any release.
  RecordSink record_sink_ = nullptr;
};

// Exports each span on the calling thread, as it ends. For tests and debugging.
std::unique_ptr<SpanProcessor> NewSimpleSpanProcessor(std::unique_ptr<SpanExporter> exporter);

// Values below 1 are taken as 1 (1 ms for the delay); a batch is at most max_queue_size items.
// Shutdown() waits at most shutdown_timeout for the queue to drain; then it cancels the export in
// flight (SpanExporter::Shutdown) and counts what is left as dropped_shutdown_timeout.
struct BatchProcessorOptions {
  size_t max_queue_size = 2048;
  size_t max_export_batch_size = 512;
  std::chrono::milliseconds schedule_delay{5000};
  std::chrono::milliseconds shutdown_timeout{30000};
};
using BatchSpanProcessorOptions = BatchProcessorOptions;
// Counters of a batch processor (of spans or of log records). `queued` counts every item handed
// to it, including the ones then dropped; each such item is counted exactly once more, in exactly
// one of the other fields. stats() takes one consistent snapshot, in which at every moment
//   queued == exported + dropped() + pending.
struct BatchExportStats {
  uint64_t queued = 0;                     // items given to OnEnd / OnEmit
  uint64_t exported = 0;                   // delivered and accepted by the receiver
  uint64_t dropped_queue_full = 0;         // the queue held max_queue_size items
  uint64_t dropped_export_failed = 0;      // the exporter failed (or threw) and gave no reason
  uint64_t dropped_rejected = 0;           // refused by the receiver, not retryable (4xx)
  uint64_t dropped_retries_exhausted = 0;  // retryable failures until attempts/deadline ran out
  uint64_t dropped_partial_success = 0;    // refused one by one in an accepted request
  uint64_t dropped_after_shutdown = 0;     // handed over after Shutdown() began
  uint64_t dropped_shutdown_timeout = 0;  // still queued or in flight when shutdown_timeout ran out
  uint64_t pending = 0;                   // in the queue, or in the batch being exported now
  uint64_t dropped() const {
    return dropped_queue_full + dropped_export_failed + dropped_rejected +
           dropped_retries_exhausted + dropped_partial_success + dropped_after_shutdown +
           dropped_shutdown_timeout;
  }
};
using BatchSpanProcessorStats = BatchExportStats;
// Why items were dropped, for a one-line report to a person: each reason with a count when there
// are several ("120 queue full, 80 No space left on device"), the reason alone when there is one,
// "" when nothing was dropped. `last_error` (a processor's last_export_error()) names the export
// failures; without it they read "export failed".
std::string DescribeDrops(const BatchExportStats& stats, std::string_view last_error);
// Queues spans (bounded; when full it drops the new span and counts it, never blocking the caller)
// and exports them on its own thread in batches, every schedule_delay or as soon as a batch is
// full.
class BatchSpanProcessor final : public SpanProcessor {
 public:
  BatchSpanProcessor(std::unique_ptr<SpanExporter> exporter,
                     BatchSpanProcessorOptions options = {});
  ~BatchSpanProcessor() override;  // Shutdown()
  void OnEnd(SpanData&& span) override;
  bool ForceFlush(std::chrono::milliseconds timeout = std::chrono::seconds(30)) override;
  void Shutdown() override;
  void SetResource(const Resource& resource) override;
  BatchSpanProcessorStats stats() const;
  // ExportResult::error of the last failed export ("" if none failed), for DescribeDrops.
  std::string last_export_error() const;

 private:
  static void QueueRecord(SpanProcessor& self, const internal::SpanRecord& record);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- tracer and spans ---------------------------------------------------------------------------

struct TracerOptions {
  bool enabled = true;       // false: StartSpan returns an empty Span and does no work at all
  double sample_rate = 1.0;  // for root spans; children follow their parent if parent_based
  bool parent_based = true;  // see Sampler
  Resource resource;
  SpanLimits limits;
  // None: spans are sampled but go nowhere. The tracer shuts it down when the tracer is destroyed
  // or shut down, so share one processor between tracers only if they end together.
  std::shared_ptr<SpanProcessor> processor;
  // Spans read UnixNanos() once at their start; events and the end are the start plus the
  // monotonic time since (as OpenTelemetry's SDKs do), so a wall-clock step cannot make a span
  // negative or reorder its events. FastClock when null.
  const Clock* clock = nullptr;
};

class Tracer;

// A span being recorded, or a non-recording one (not sampled: it still has a context to hand on),
// or an empty one (tracing disabled). Move-only; ends itself when destroyed.
class Span {
 public:
  Span() = default;  // empty
  Span(Span&&) noexcept;
  Span& operator=(Span&&) noexcept;
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;
  // Inline, like End(): an empty or non-recording span (spans off, sampled out) costs a test.
  ~Span() { End(); }

  bool recording() const { return state_ != nullptr; }
  const SpanContext& context() const { return context_; }

  // No-ops on a non-recording span and after End(). Past the limits, attributes and events are
  // dropped and counted (an existing attribute key is overwritten, not counted); an event's
  // attributes past max_attributes_per_event are dropped and counted on the event.
  void SetAttribute(std::string_view key, const AttributeValue& value);
  // Several at once, borrowed (copied into the span): SetAttributes({{"taskId", id}, {"n", 3}}).
  void SetAttributes(std::initializer_list<AttributeView> attributes);
  void AddEvent(std::string_view name, Attributes attributes = {});
  // The same with borrowed attributes; chosen for a braced list: AddEvent("x", {{"k", 1}}).
  void AddEvent(std::string_view name, std::initializer_list<AttributeView> attributes);
  // OpenTelemetry's rules: kUnset is ignored, kOk is final, the message is kept only with kError.
  void SetStatus(StatusCode code, std::string_view message = {});
  // Ends the span and hands it to the processor; later calls do nothing. recording() stays true
  // (another thread may still hold the span), but nothing more is recorded.
  void End() {
    if (state_) EndRecording(kReadClock);
  }

 private:
  friend class Tracer;
  friend class internal::SpanEditor;
  friend class internal::SpanFastPath;
  static constexpr int64_t kReadClock = INT64_MIN;
  void EndRecording(int64_t mono_nanos);
  struct State;
  // Keeps a few ended states per thread for the next spans instead of freeing them.
  struct StateDeleter {
    void operator()(State* state) const noexcept;
  };
  SpanContext context_;
  std::unique_ptr<State, StateDeleter> state_;
};

// Spans point at their tracer: a Tracer must outlive every Span it started, so it is neither
// copied nor moved.
class Tracer {
 public:
  explicit Tracer(TracerOptions options);
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;
  ~Tracer();  // shuts the processor down (flushes)

  // `parent` may be null or invalid: a new trace starts. The span is recording only if sampled.
  Span StartSpan(std::string_view name, const SpanContext* parent = nullptr,
                 SpanKind kind = SpanKind::kInternal, const Attributes& attributes = {});
  bool enabled() const { return options_.enabled; }
  const Resource& resource() const { return options_.resource; }
  const Clock& clock() const { return *options_.clock; }
  bool ForceFlush(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  void Shutdown();

 private:
  friend class Span;
  friend class internal::SpanEditor;
  friend class internal::SpanFastPath;
  Span Start(int64_t start_mono_nanos, std::string_view name, const SpanContext* parent,
             SpanKind kind, const Attributes& attributes);
  TracerOptions options_;
  Sampler sampler_;
};

}  // namespace laneguard

#endif  // LANEGUARD_TRACE_TRACE_H_
