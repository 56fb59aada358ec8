#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "laneguard/trace/trace.h"
#include "trace/batch_worker.h"
#include "trace/span_pool.h"
#include "trace/span_record.h"

namespace laneguard {
namespace {

// Calls the exporter; an exception counts as a failed export and never escapes.
bool SafeExport(SpanExporter& exporter, const std::vector<SpanData>& batch,
                const Resource& resource) {
  try {
    return exporter.Export(batch, resource);
  } catch (...) {
    return false;
  }
}

void SafeShutdown(SpanExporter& exporter) {
  try {
    exporter.Shutdown();
  } catch (...) {
  }
}

class SimpleSpanProcessor final : public SpanProcessor {
 public:
  explicit SimpleSpanProcessor(std::unique_ptr<SpanExporter> exporter)
      : exporter_(std::move(exporter)) {}
  ~SimpleSpanProcessor() override { Shutdown(); }

  void OnEnd(SpanData&& span) override {
    internal::MutexLock lock(mu_);
    if (shutdown_ || !exporter_) return;
    batch_.push_back(std::move(span));
    SafeExport(*exporter_, batch_, resource_);
    internal::RecycleSpanData(batch_);  // empties it; its capacity serves the next span
  }

  bool ForceFlush(std::chrono::milliseconds) override { return true; }

  void Shutdown() override {
    internal::MutexLock lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
    if (exporter_) SafeShutdown(*exporter_);
  }

  void SetResource(const Resource& resource) override {
    internal::MutexLock lock(mu_);
    resource_ = resource;
  }

 private:
  internal::Mutex mu_;  // one export at a time, as SpanExporter requires
  const std::unique_ptr<SpanExporter> exporter_ PT_GUARDED_BY(mu_);
  std::vector<SpanData> batch_ GUARDED_BY(mu_);  // always empty between calls
  Resource resource_ GUARDED_BY(mu_);
  bool shutdown_ GUARDED_BY(mu_) = false;
};

}  // namespace

std::unique_ptr<SpanProcessor> NewSimpleSpanProcessor(std::unique_ptr<SpanExporter> exporter) {
  return std::make_unique<SimpleSpanProcessor>(std::move(exporter));
}

// ---- batch processor ----------------------------------------------------------------------------

namespace {

// What the queue holds: a span as the tracer recorded it, or as SpanData (handed to OnEnd, by the
// tracer for a span whose log filled up, or by a caller of OnEnd).
struct QueuedSpan {
  QueuedSpan() {}  // NOLINT(modernize-use-equals-default): = default would zero the record's log
  std::unique_ptr<SpanData> data;  // null: `record` holds the span
  internal::SpanRecord record;
};

}  // namespace

struct BatchSpanProcessor::Impl {
  std::unique_ptr<SpanExporter> exporter;
  internal::Mutex resource_mu;
  std::shared_ptr<const Resource> resource GUARDED_BY(resource_mu) =
      std::make_shared<const Resource>();
  std::once_flag exporter_shutdown_once;
  // The export thread's own: the batch's spans, rebuilt in place for every batch so that their
  // buffers are reused, and spans kept aside while a batch is smaller.
  std::vector<SpanData> spans;
  std::vector<SpanData> spare_spans;
  internal::BatchWorker<QueuedSpan> worker;  // last: its thread uses the members above

  Impl(std::unique_ptr<SpanExporter> e, const BatchSpanProcessorOptions& o)
      : exporter(std::move(e)),
        worker([this](std::vector<QueuedSpan>& b) { return Export(b); }, o) {}

  ExportResult Export(std::vector<QueuedSpan>& batch) {
    const size_t n = batch.size();
    while (spans.size() > n) {
      spare_spans.push_back(std::move(spans.back()));
      spans.pop_back();
    }
    while (spans.size() < n && !spare_spans.empty()) {
      spans.push_back(std::move(spare_spans.back()));
      spare_spans.pop_back();
    }
    spans.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (batch[i].data) {
        std::swap(spans[i], *batch[i].data);  // the old buffers go with the queue's item
      } else {
        internal::ReplaySpanRecord(batch[i].record, spans[i]);
      }
    }
    std::shared_ptr<const Resource> r;
    {
      internal::MutexLock lock(resource_mu);
      r = resource;
    }
    ExportResult result;
    try {
      if (exporter) result = exporter->ExportWithResult(spans, *r);
    } catch (...) {
      result = {ExportResult::Code::kFailed};
    }
    // Kept for the next batch's spans, but not a giant: its buffers are freed.
    for (SpanData& span : spans) {
      if (!internal::WorthKeeping(span)) span = SpanData();
    }
    return result;
  }
};

BatchSpanProcessor::BatchSpanProcessor(std::unique_ptr<SpanExporter> exporter,
                                       BatchSpanProcessorOptions options)
    : impl_(std::make_unique<Impl>(std::move(exporter), options)) {
  record_sink_ = &QueueRecord;
}

BatchSpanProcessor::~BatchSpanProcessor() { Shutdown(); }

void BatchSpanProcessor::OnEnd(SpanData&& span) {
  auto data = std::make_unique<SpanData>(std::move(span));
  impl_->worker.PushWith([&data](QueuedSpan& item) { item.data = std::move(data); });
}

void BatchSpanProcessor::QueueRecord(SpanProcessor& self, const internal::SpanRecord& record) {
  // The record is copied under the queue's lock: a few hundred bytes, and no second copy.
  static_cast<BatchSpanProcessor&>(self).impl_->worker.PushWith(
      [&record](QueuedSpan& item) { internal::CopySpanRecord(record, item.record); });
}

bool BatchSpanProcessor::ForceFlush(std::chrono::milliseconds timeout) {
  return impl_->worker.ForceFlush(timeout);
}

void BatchSpanProcessor::Shutdown() {
  Impl& d = *impl_;
  // Past shutdown_timeout the exporter's Shutdown cancels the export still in flight; it runs
  // again (exporters make it idempotent) once the thread has stopped, to flush and close.
  d.worker.Shutdown([&d] {
    if (d.exporter) SafeShutdown(*d.exporter);
  });
  std::call_once(d.exporter_shutdown_once, [&d] {
    if (d.exporter) SafeShutdown(*d.exporter);
  });
}

void BatchSpanProcessor::SetResource(const Resource& resource) {
  auto r = std::make_shared<const Resource>(resource);
  internal::MutexLock lock(impl_->resource_mu);
  impl_->resource = std::move(r);
}

BatchSpanProcessorStats BatchSpanProcessor::stats() const { return impl_->worker.stats(); }
std::string BatchSpanProcessor::last_export_error() const { return impl_->worker.last_error(); }

std::string DescribeDrops(const BatchExportStats& s, std::string_view last_error) {
  const std::string failed = last_error.empty() ? "export failed" : std::string(last_error);
  const std::string timeout = last_error.empty()
                                  ? "not sent before the flush timeout"
                                  : "not sent before the flush timeout; last error: " + failed;
  const std::pair<uint64_t, std::string> reasons[] = {
      {s.dropped_queue_full, "queue full"},
      {s.dropped_export_failed, failed},
      {s.dropped_rejected, "rejected by the receiver: " + failed},
      {s.dropped_retries_exhausted, "retries exhausted: " + failed},
      {s.dropped_partial_success, "refused one by one by the receiver"},
      {s.dropped_after_shutdown, "after shutdown"},
      {s.dropped_shutdown_timeout, timeout},
  };
  std::vector<const std::pair<uint64_t, std::string>*> present;
  for (const auto& r : reasons)
    if (r.first > 0) present.push_back(&r);
  if (present.size() == 1) return present[0]->second;
  std::string out;
  for (const auto* r : present)
    out += (out.empty() ? "" : ", ") + std::to_string(r->first) + " " + r->second;
  return out;
}

}  // namespace laneguard
