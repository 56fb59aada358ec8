// A span exporter that drops every batch, for measuring what recording and handing over a span
// cost the caller (worker_bench.cc and callgrind_calls.cc measure the same thing).
#ifndef LANEGUARD_BENCH_DISCARD_EXPORTER_H_
#define LANEGUARD_BENCH_DISCARD_EXPORTER_H_

#include <vector>

#include "laneguard/trace/trace.h"

namespace laneguard {

class DiscardExporter final : public SpanExporter {
 public:
  bool Export(const std::vector<SpanData>& batch, const Resource&) override {
    return !batch.empty();
  }
};

}  // namespace laneguard

#endif  // LANEGUARD_BENCH_DISCARD_EXPORTER_H_
