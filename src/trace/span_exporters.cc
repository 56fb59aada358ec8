#include <cerrno>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>

#include "base/line_file.h"
#include "laneguard/trace/trace.h"
#include "trace/otlp_json.h"

namespace laneguard {

// ---- in memory ----------------------------------------------------------------------------------

bool InMemorySpanExporter::Export(const std::vector<SpanData>& batch, const Resource&) {
  internal::MutexLock lock(mu_);
  spans_.insert(spans_.end(), batch.begin(), batch.end());
  return true;
}

std::vector<SpanData> InMemorySpanExporter::spans() const {
  internal::MutexLock lock(mu_);
  return spans_;
}

void InMemorySpanExporter::Clear() {
  internal::MutexLock lock(mu_);
  spans_.clear();
}

// ---- JSON lines ---------------------------------------------------------------------------------

namespace {

class JsonLinesSpanExporter final : public SpanExporter {
 public:
  JsonLinesSpanExporter(std::FILE* stream, bool owns_stream)
      : stream_(stream), owns_stream_(owns_stream) {}
  ~JsonLinesSpanExporter() override {
    if (owns_stream_ && stream_ != nullptr) std::fclose(stream_);
  }

  bool Export(const std::vector<SpanData>& batch, const Resource& resource) override {
    return ExportWithResult(batch, resource).code == ExportResult::Code::kSuccess;
  }

  // One write of the whole batch; if the file fills up, the spans whose lines made it count as
  // delivered and the file is cut back to them (line_file.h).
  ExportResult ExportWithResult(const std::vector<SpanData>& batch,
                                const Resource& resource) override {
    std::string text;
    try {
      text = Format(batch, resource);
    } catch (...) {
      return {ExportResult::Code::kFailed, 0, 0, "out of memory while formatting spans"};
    }
    internal::MutexLock lock(mu_);
    if (stream_ == nullptr) return {ExportResult::Code::kFailed};
    const internal::AppendResult written = internal::AppendLines(stream_, text);
    if (written.error == 0) return {};
    return {ExportResult::Code::kFailed, 0, written.lines,
            std::error_code(written.error, std::generic_category()).message()};
  }

  void Shutdown() override {
    internal::MutexLock lock(mu_);
    if (stream_ != nullptr) std::fflush(stream_);
  }

 private:
  static std::string Format(const std::vector<SpanData>& batch, const Resource& resource) {
    std::string resource_json;
    internal::OtlpJsonWriter(resource_json).Resource(resource);
    std::string text;
    internal::OtlpJsonWriter w(text);
    for (const SpanData& span : batch) {
      w.Raw("{\"resource\":");
      w.Raw(resource_json);
      w.Raw(",");
      w.SpanFields(span);
      w.Raw("}");
      text += '\n';
    }
    return text;
  }

  internal::Mutex mu_;
  std::FILE* const stream_ PT_GUARDED_BY(mu_);  // its writes go one batch at a time
  const bool owns_stream_;
};

}  // namespace

std::unique_ptr<SpanExporter> NewJsonLinesSpanExporter(std::FILE* stream) {
  return std::make_unique<JsonLinesSpanExporter>(stream, /*owns_stream=*/false);
}

Result<std::unique_ptr<SpanExporter>> NewJsonLinesFileSpanExporter(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "ae");
  if (f == nullptr) {
    const int error = errno;
    return Error{ErrorCodeForErrno(error), "spanExportFile", nlohmann::json(path).dump(),
                 "cannot open span export file '" + path +
                     "': " + std::error_code(error, std::generic_category()).message()};
  }
  return std::unique_ptr<SpanExporter>(
      std::make_unique<JsonLinesSpanExporter>(f, /*owns_stream=*/true));
}

std::unique_ptr<SpanExporter> NewStdoutSpanExporter() { return NewJsonLinesSpanExporter(stdout); }

}  // namespace laneguard
