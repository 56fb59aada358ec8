#include <utility>

#include "laneguard/observe/json_logger.h"
#include "trace/batch_worker.h"

namespace laneguard {

struct BatchLogRecordProcessor::Impl {
  std::unique_ptr<LogRecordExporter> exporter;
  const Resource resource;
  std::once_flag exporter_shutdown_once;
  internal::BatchWorker<LogRecord> worker;

  Impl(std::unique_ptr<LogRecordExporter> e, Resource r, const BatchProcessorOptions& o)
      : exporter(std::move(e)),
        resource(std::move(r)),
        worker([this](const std::vector<LogRecord>& b) { return Export(b); }, o) {}

  ExportResult Export(const std::vector<LogRecord>& batch) {
    if (!exporter) return {};
    try {
      return exporter->Export(batch, resource);
    } catch (...) {
      return {ExportResult::Code::kFailed};
    }
  }

  void ShutdownExporter() {
    try {
      if (exporter) exporter->Shutdown();
    } catch (...) {
    }
  }
};

BatchLogRecordProcessor::BatchLogRecordProcessor(std::unique_ptr<LogRecordExporter> exporter,
                                                 Resource resource, BatchProcessorOptions options)
    : impl_(std::make_unique<Impl>(std::move(exporter), std::move(resource), options)) {}

BatchLogRecordProcessor::~BatchLogRecordProcessor() { Shutdown(); }

void BatchLogRecordProcessor::OnEmit(LogRecord&& record) {
  (void)impl_->worker.Push(std::move(record));  // a dropped record is counted there
}

bool BatchLogRecordProcessor::ForceFlush(std::chrono::milliseconds timeout) {
  return impl_->worker.ForceFlush(timeout);
}

void BatchLogRecordProcessor::Shutdown() {
  Impl& d = *impl_;
  // As BatchSpanProcessor::Shutdown: cancel on timeout, then shut the exporter down once.
  d.worker.Shutdown([&d] { d.ShutdownExporter(); });
  std::call_once(d.exporter_shutdown_once, [&d] { d.ShutdownExporter(); });
}

BatchExportStats BatchLogRecordProcessor::stats() const { return impl_->worker.stats(); }
std::string BatchLogRecordProcessor::last_export_error() const {
  return impl_->worker.last_error();
}

}  // namespace laneguard
