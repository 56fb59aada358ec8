// Content negotiation and the two serializers. The text format 0.0.4 is prometheus-cpp's own
// TextSerializer. OpenMetrics is written here because prometheus-cpp 1.0.1 (Debian 12) has no
// OpenMetrics serializer; it works from the same MetricFamily values, so both formats always carry
// the same families and samples.
#include <prometheus/text_serializer.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "exporters/prometheus_internal.h"
#include "laneguard/exporters/prometheus.h"

namespace laneguard {
namespace {

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Unquote(std::string_view v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') return v.substr(1, v.size() - 2);
  return v;
}

// Shortest text that parses back to the same double; "+Inf", "-Inf", "NaN" as both formats spell
// them.
void AppendNumber(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
  }
}

void AppendEscaped(std::string& out, std::string_view s) {
  for (char ch : s) {
    switch (ch) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += ch;
    }
  }
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// name{labels[,extra="value"]} value\n
void AppendSample(std::string& out, std::string_view name, std::string_view suffix,
                  const std::vector<prometheus::ClientMetric::Label>& labels,
                  std::string_view extra_name, double extra_value, bool has_extra, double value) {
  out += name;
  out += suffix;
  if (!labels.empty() || has_extra) {
    out += '{';
    bool first = true;
    for (const auto& l : labels) {
      if (!first) out += ',';
      first = false;
      out += l.name;
      out += "=\"";
      AppendEscaped(out, l.value);
      out += '"';
    }
    if (has_extra) {
      if (!first) out += ',';
      out += extra_name;
      out += "=\"";
      AppendNumber(out, extra_value);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  AppendNumber(out, value);
  out += '\n';
}

}  // namespace

std::string_view ContentType(ExpositionFormat format) {
  return format == ExpositionFormat::kOpenMetrics1
             ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
             : "text/plain; version=0.0.4; charset=utf-8";
}

ExpositionFormat NegotiateFormat(std::string_view accept) {
  double best_openmetrics = 0;
  double best_text = 0;
  while (!accept.empty()) {
    const size_t comma = accept.find(',');
    std::string_view range = accept.substr(0, comma);
    accept = comma == std::string_view::npos ? std::string_view() : accept.substr(comma + 1);

    const size_t semi = range.find(';');
    const std::string_view type = Trim(range.substr(0, semi));
    std::string_view params = semi == std::string_view::npos ? "" : range.substr(semi + 1);
    double q = 1;
    std::string_view version;
    while (!params.empty()) {
      const size_t next = params.find(';');
      const std::string_view param = Trim(params.substr(0, next));
      params = next == std::string_view::npos ? std::string_view() : params.substr(next + 1);
      const size_t eq = param.find('=');
      if (eq == std::string_view::npos) continue;
      const std::string_view key = Trim(param.substr(0, eq));
      const std::string_view value = Unquote(Trim(param.substr(eq + 1)));
      if (EqualsIgnoreCase(key, "q")) {
        const std::string text(value);
        char* end = nullptr;
        const double parsed = std::strtod(text.c_str(), &end);
        // A malformed q-value makes the range unusable rather than preferred.
        q = (end != text.c_str() && *end == '\0' && parsed >= 0 && parsed <= 1) ? parsed : 0;
      } else if (EqualsIgnoreCase(key, "version")) {
        version = value;
      }
    }
    if (EqualsIgnoreCase(type, "application/openmetrics-text")) {
      if (version.empty() || version == "1.0.0") best_openmetrics = std::max(best_openmetrics, q);
    } else if (EqualsIgnoreCase(type, "text/plain")) {
      if (version.empty() || version == "0.0.4") best_text = std::max(best_text, q);
    } else if (EqualsIgnoreCase(type, "text/*") || type == "*/*") {
      best_text = std::max(best_text, q);
    }
  }
  return best_openmetrics > 0 && best_openmetrics >= best_text ? ExpositionFormat::kOpenMetrics1
                                                               : ExpositionFormat::kText004;
}

std::string SerializeText(const std::vector<prometheus::MetricFamily>& families) {
  return prometheus::TextSerializer().Serialize(families);
}

namespace {

// OpenMetrics' name of a metric type.
const char* OpenMetricsType(prometheus::MetricType type) {
  using prometheus::MetricType;
  switch (type) {
    case MetricType::Counter:
      return "counter";
    case MetricType::Gauge:
      return "gauge";
    case MetricType::Histogram:
      return "histogram";
    case MetricType::Summary:
      return "summary";
    case MetricType::Untyped:
      return "unknown";
  }
  return "unknown";
}

// The family's # TYPE, # UNIT (when the name ends in one) and # HELP lines.
void AppendOpenMetricsHeader(std::string& out, std::string_view name,
                             const prometheus::MetricFamily& f) {
  out += "# TYPE ";
  out += name;
  out += ' ';
  out += OpenMetricsType(f.type);
  out += '\n';
  // A UNIT line must be a suffix of the name; only the units our families use are declared.
  for (std::string_view unit : {"seconds", "bytes"}) {
    if (EndsWith(name, std::string("_") + std::string(unit))) {
      out += "# UNIT ";
      out += name;
      out += ' ';
      out += unit;
      out += '\n';
    }
  }
  out += "# HELP ";
  out += name;
  out += ' ';
  AppendEscaped(out, f.help);
  out += '\n';
}

// One metric's samples: a histogram's buckets (with the +Inf one OpenMetrics requires), count
// and sum; a summary's quantiles, count and sum; else its one value.
void AppendOpenMetricsSamples(std::string& out, std::string_view name, prometheus::MetricType type,
                              const prometheus::ClientMetric& m) {
  using prometheus::MetricType;
  switch (type) {
    case MetricType::Counter:
      AppendSample(out, name, "_total", m.label, "", 0, false, m.counter.value);
      break;
    case MetricType::Gauge:
      AppendSample(out, name, "", m.label, "", 0, false, m.gauge.value);
      break;
    case MetricType::Histogram: {
      bool has_inf = false;
      for (const auto& b : m.histogram.bucket) {
        has_inf = has_inf || std::isinf(b.upper_bound);
        AppendSample(out, name, "_bucket", m.label, "le", b.upper_bound, true,
                     static_cast<double>(b.cumulative_count));
      }
      if (!has_inf) {
        AppendSample(out, name, "_bucket", m.label, "le", HUGE_VAL, true,
                     static_cast<double>(m.histogram.sample_count));
      }
      AppendSample(out, name, "_count", m.label, "", 0, false,
                   static_cast<double>(m.histogram.sample_count));
      AppendSample(out, name, "_sum", m.label, "", 0, false, m.histogram.sample_sum);
      break;
    }
    case MetricType::Summary:
      for (const auto& q : m.summary.quantile) {
        AppendSample(out, name, "", m.label, "quantile", q.quantile, true, q.value);
      }
      AppendSample(out, name, "_count", m.label, "", 0, false,
                   static_cast<double>(m.summary.sample_count));
      AppendSample(out, name, "_sum", m.label, "", 0, false, m.summary.sample_sum);
      break;
    case MetricType::Untyped:
      AppendSample(out, name, "", m.label, "", 0, false, m.untyped.value);
      break;
  }
}

}  // namespace

std::string SerializeOpenMetrics(const std::vector<prometheus::MetricFamily>& families) {
  std::string out;
  out.reserve(families.size() * 512);
  for (const prometheus::MetricFamily& f : families) {
    // OpenMetrics names a counter family without its _total; the samples carry it.
    std::string_view name = f.name;
    if (f.type == prometheus::MetricType::Counter && EndsWith(name, "_total")) {
      name.remove_suffix(sizeof("_total") - 1);
    }
    AppendOpenMetricsHeader(out, name, f);
    for (const prometheus::ClientMetric& m : f.metric)
      AppendOpenMetricsSamples(out, name, f.type, m);
  }
  out += "# EOF\n";
  return out;
}

}  // namespace laneguard
