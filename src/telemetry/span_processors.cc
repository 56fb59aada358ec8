#include <utility>

#include "laneguard/trace.h"
#include "telemetry/batch_worker.h"
#include "telemetry/span_pool.h"

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
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_ || !exporter_) return;
    batch_.push_back(std::move(span));
    SafeExport(*exporter_, batch_, resource_);
    internal::RecycleSpanData(batch_);  // empties it; its capacity serves the next span
  }

  bool ForceFlush(std::chrono::milliseconds) override { return true; }

  void Shutdown() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
    if (exporter_) SafeShutdown(*exporter_);
  }

  void SetResource(const Resource& resource) override {
    std::lock_guard<std::mutex> lock(mu_);
    resource_ = resource;
  }

 private:
  std::mutex mu_;  // one export at a time, as SpanExporter requires
  std::unique_ptr<SpanExporter> exporter_;
  std::vector<SpanData> batch_;  // always empty between calls
  Resource resource_;
  bool shutdown_ = false;
};

}  // namespace

std::unique_ptr<SpanProcessor> NewSimpleSpanProcessor(std::unique_ptr<SpanExporter> exporter) {
  return std::make_unique<SimpleSpanProcessor>(std::move(exporter));
}

// ---- batch processor ----------------------------------------------------------------------------

struct BatchSpanProcessor::Impl {
  std::unique_ptr<SpanExporter> exporter;
  std::mutex resource_mu;
  std::shared_ptr<const Resource> resource = std::make_shared<const Resource>();
  std::once_flag exporter_shutdown_once;
  internal::BatchWorker<SpanData> worker;

  Impl(std::unique_ptr<SpanExporter> e, const BatchSpanProcessorOptions& o)
      : exporter(std::move(e)),
        worker([this](std::vector<SpanData>& b) { return Export(b); }, o,
               [](std::vector<SpanData>& b) { internal::RecycleSpanData(b); }) {}

  ExportResult Export(std::vector<SpanData>& batch) {
    for (SpanData& span : batch) ExpandCompactEvents(span);
    std::shared_ptr<const Resource> r;
    {
      std::lock_guard<std::mutex> lock(resource_mu);
      r = resource;
    }
    if (!exporter) return {};
    try {
      return exporter->ExportWithResult(batch, *r);
    } catch (...) {
      return {ExportResult::Code::kFailed};
    }
  }
};

BatchSpanProcessor::BatchSpanProcessor(std::unique_ptr<SpanExporter> exporter,
                                       BatchSpanProcessorOptions options)
    : impl_(std::make_unique<Impl>(std::move(exporter), options)) {}

BatchSpanProcessor::~BatchSpanProcessor() { Shutdown(); }

void BatchSpanProcessor::OnEnd(SpanData&& span) {
  // A dropped span (queue full) keeps its buffers for this thread's next spans.
  if (!impl_->worker.Push(std::move(span)))
    internal::RecycleSpanData(std::move(span));  // NOLINT(bugprone-use-after-move): not moved
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
  std::lock_guard<std::mutex> lock(impl_->resource_mu);
  impl_->resource = std::move(r);
}

BatchSpanProcessorStats BatchSpanProcessor::stats() const { return impl_->worker.stats(); }

}  // namespace laneguard
