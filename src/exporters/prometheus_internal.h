// Pieces of the Prometheus exposition shared by the collector, the benchmarks and the tests.
#ifndef LANEGUARD_SRC_EXPORTERS_PROMETHEUS_INTERNAL_H_
#define LANEGUARD_SRC_EXPORTERS_PROMETHEUS_INTERNAL_H_

#include <prometheus/metric_family.h>

#include <string>
#include <vector>

#include "laneguard/exporters/prometheus.h"

namespace laneguard {

// Every family, counters named with their _total suffix (as the text format and prometheus-cpp
// name them), each with HELP text and at least one sample.
std::vector<prometheus::MetricFamily> CollectFamilies(const PrometheusCollector& collector);

// prometheus-cpp's TextSerializer (text format 0.0.4).
std::string SerializeText(const std::vector<prometheus::MetricFamily>& families);
// OpenMetrics 1.0 text, by hand: prometheus-cpp 1.0.1 has no OpenMetrics serializer.
std::string SerializeOpenMetrics(const std::vector<prometheus::MetricFamily>& families);

struct PrometheusCollectorAccess {
  static std::vector<prometheus::MetricFamily> Collect(const PrometheusCollector& collector);
};

}  // namespace laneguard

#endif  // LANEGUARD_SRC_EXPORTERS_PROMETHEUS_INTERNAL_H_
