// OTEL_* environment variables, read the way the OpenTelemetry specification's "Environment
// Variable Specification" and the OTLP exporter specification describe them.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <string>

#include "laneguard/exporters/otlp.h"

namespace laneguard {

namespace {

constexpr std::string_view kDefaultBase = "http://localhost:4318";

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> PercentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = HexDigit(s[i + 1]);
    const int lo = HexDigit(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

// "k1=v1, k2=v2" with percent-encoded keys and values (the W3C baggage form the spec uses for
// OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS). nullopt if any entry is malformed.
std::optional<OtlpHeaders> ParseKeyValueList(std::string_view text) {
  OtlpHeaders out;
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view entry = Trim(text.substr(0, comma));
    text = comma == std::string_view::npos ? std::string_view{} : text.substr(comma + 1);
    if (entry.empty()) continue;
    const size_t eq = entry.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    std::optional<std::string> key = PercentDecode(Trim(entry.substr(0, eq)));
    std::optional<std::string> value = PercentDecode(Trim(entry.substr(eq + 1)));
    if (!key || !value || key->empty()) return std::nullopt;
    out.emplace_back(std::move(*key), std::move(*value));
  }
  return out;
}

std::optional<int64_t> ParseInt(std::string_view text) {
  text = Trim(text);
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return v;
}

std::optional<double> ParseRatio(std::string_view text) {
  text = Trim(text);
  if (text.empty()) return std::nullopt;
  const std::string s(text);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !(v >= 0.0 && v <= 1.0)) return std::nullopt;
  return v;
}

bool IsHttpUrl(std::string_view url) {
  return url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0;
}

std::string SignalUrl(std::string_view base, std::string_view path) {
  while (!base.empty() && base.back() == '/') base.remove_suffix(1);
  return std::string(base) + std::string(path);
}

void MergeHeaders(OtlpHeaders& into, const OtlpHeaders& more) {
  for (const auto& [name, value] : more) {
    const std::string lname = Lower(name);
    std::erase_if(into, [&](const auto& h) { return Lower(h.first) == lname; });
    into.emplace_back(name, value);
  }
}

class EnvReader {
 public:
  EnvReader(const EnvLookup& env, std::vector<std::string>& warnings)
      : env_(env), warnings_(warnings) {}

  // Set and not blank. The specification treats an empty variable as unset.
  std::optional<std::string> Get(std::string_view name) const {
    std::optional<std::string> v = env_ ? env_(name) : std::nullopt;
    if (v && Trim(*v).empty()) return std::nullopt;
    return v;
  }

  void Warn(std::string_view name, std::string_view value, std::string_view why,
            std::string_view fallback) {
    warnings_.push_back(std::string(name) + "='" + std::string(value) +
                        "' ignored: " + std::string(why) + "; using " + std::string(fallback));
  }

  // A millisecond count at least `min`; else a warning and `current` stays. True if it changed.
  bool Millis(std::string_view name, int64_t min, std::chrono::milliseconds& current) {
    std::optional<std::string> v = Get(name);
    if (!v) return false;
    std::optional<int64_t> n = ParseInt(*v);
    if (!n || *n < min) {
      Warn(name, *v, "must be an integer number of milliseconds >= " + std::to_string(min),
           std::to_string(current.count()) + " ms");
      return false;
    }
    current = std::chrono::milliseconds(*n);
    return true;
  }

  void Size(std::string_view name, size_t& current) {
    std::optional<std::string> v = Get(name);
    if (!v) return;
    std::optional<int64_t> n = ParseInt(*v);
    if (!n || *n < 1) {
      Warn(name, *v, "must be an integer >= 1", std::to_string(current));
      return;
    }
    current = static_cast<size_t>(*n);
  }

  void Endpoint(std::string_view name, std::string& current) {
    std::optional<std::string> v = Get(name);
    if (!v) return;
    const std::string url(Trim(*v));
    if (!IsHttpUrl(url)) {
      Warn(name, *v, "must be an http:// or https:// URL", current);
      return;
    }
    current = url;
  }

  void Headers(std::string_view name, OtlpHeaders& current) {
    std::optional<std::string> v = Get(name);
    if (!v) return;
    std::optional<OtlpHeaders> parsed = ParseKeyValueList(*v);
    if (!parsed) {
      Warn(name, *v, "must be a list of key=value pairs with percent-encoded values",
           "no headers from it");
      return;
    }
    MergeHeaders(current, *parsed);
  }

 private:
  const EnvLookup& env_;
  std::vector<std::string>& warnings_;
};

void ReadResource(EnvReader& env, Resource& r) {
  if (std::optional<std::string> v = env.Get("OTEL_RESOURCE_ATTRIBUTES")) {
    std::optional<OtlpHeaders> parsed = ParseKeyValueList(*v);
    if (!parsed) {
      env.Warn("OTEL_RESOURCE_ATTRIBUTES", *v,
               "must be a list of key=value pairs with percent-encoded values",
               "no resource attributes from it");
    } else {
      for (auto& [key, value] : *parsed) {
        if (key == "service.name") {
          r.service_name = value;
        } else if (key == "service.version") {
          r.service_version = value;
        } else if (key == "deployment.environment") {
          r.deployment_environment = value;
        } else {
          std::erase_if(r.extra, [&key = key](const Attribute& a) { return a.key == key; });
          r.extra.push_back({key, value});
        }
      }
    }
  }
  if (std::optional<std::string> v = env.Get("OTEL_SERVICE_NAME")) r.service_name = *v;
}

void ReadSampler(EnvReader& env, OtlpSettings& s) {
  std::optional<std::string> v = env.Get("OTEL_TRACES_SAMPLER");
  if (!v) return;
  const std::string name = Lower(Trim(*v));
  const std::string fallback = std::string(s.sampler_parent_based ? "parent-based " : "") +
                               "ratio " + std::to_string(s.sample_ratio);
  bool uses_arg = false;
  double ratio = 1.0;
  bool parent_based = false;
  if (name == "always_on") {
  } else if (name == "always_off") {
    ratio = 0.0;
  } else if (name == "traceidratio") {
    uses_arg = true;
  } else if (name == "parentbased_always_on") {
    parent_based = true;
  } else if (name == "parentbased_always_off") {
    ratio = 0.0;
    parent_based = true;
  } else if (name == "parentbased_traceidratio") {
    uses_arg = true;
    parent_based = true;
  } else {
    env.Warn("OTEL_TRACES_SAMPLER", *v,
             "must be one of always_on, always_off, traceidratio, parentbased_always_on, "
             "parentbased_always_off, parentbased_traceidratio",
             fallback);
    return;
  }
  if (uses_arg) {
    // The specification's default ratio when the argument is missing or bad.
    ratio = 1.0;
    if (std::optional<std::string> arg = env.Get("OTEL_TRACES_SAMPLER_ARG")) {
      if (std::optional<double> r = ParseRatio(*arg)) {
        ratio = *r;
      } else {
        env.Warn("OTEL_TRACES_SAMPLER_ARG", *arg, "must be a number in [0, 1]", "ratio 1.0");
      }
    }
  }
  s.sample_ratio = ratio;
  s.sampler_parent_based = parent_based;
}

}  // namespace

EnvLookup ProcessEnvironment() {
  return [](std::string_view name) -> std::optional<std::string> {
    // Unsafe only against a concurrent setenv, which no part of laneguard calls; the caller reads
    // the environment once, at configuration.
    const char* v = std::getenv(std::string(name).c_str());  // NOLINT(concurrency-mt-unsafe)
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

TracerOptions OtlpSettings::TracerOptionsWith(std::shared_ptr<SpanProcessor> processor) const {
  TracerOptions o;
  o.enabled = enabled;
  o.sample_rate = sample_ratio;
  o.parent_based = sampler_parent_based;
  o.resource = resource;
  o.processor = std::move(processor);
  return o;
}

OtlpSettings OtlpSettingsFromConfig(const Config& config, Resource resource) {
  OtlpSettings s;
  s.resource = std::move(resource);
  s.enabled = config.enable_span_emission;
  s.sample_ratio = config.span_sample_rate;
  s.sampler_parent_based = true;
  s.traces.endpoint = SignalUrl(kDefaultBase, "/v1/traces");
  s.logs.endpoint = SignalUrl(kDefaultBase, "/v1/logs");
  return s;
}

// OTEL_BSP_* (spans) or OTEL_BLRP_* (log records): the same four variables, the same rules.
void ReadBatchProcessor(EnvReader& env, const std::string& prefix, BatchProcessorOptions& batch,
                        std::chrono::milliseconds& export_timeout) {
  env.Millis(prefix + "SCHEDULE_DELAY", 0, batch.schedule_delay);
  env.Millis(prefix + "EXPORT_TIMEOUT", 1, export_timeout);
  env.Size(prefix + "MAX_QUEUE_SIZE", batch.max_queue_size);
  const size_t batch_before = batch.max_export_batch_size;
  const std::string batch_size = prefix + "MAX_EXPORT_BATCH_SIZE";
  env.Size(batch_size, batch.max_export_batch_size);
  if (batch.max_export_batch_size > batch.max_queue_size) {
    if (batch.max_export_batch_size != batch_before) {
      env.Warn(batch_size, std::to_string(batch.max_export_batch_size),
               "must not exceed the queue size", std::to_string(batch.max_queue_size));
    }
    batch.max_export_batch_size = batch.max_queue_size;
  }
}

OtlpEnvResult ReadOtlpEnvironment(OtlpSettings base, const EnvLookup& lookup) {
  OtlpEnvResult out{std::move(base), {}};
  OtlpSettings& s = out.settings;
  EnvReader env(lookup, out.warnings);

  if (std::optional<std::string> v = env.Get("OTEL_SDK_DISABLED")) {
    const std::string b = Lower(Trim(*v));
    if (b == "true") {
      s.enabled = false;
    } else if (b != "false") {
      env.Warn("OTEL_SDK_DISABLED", *v, "must be true or false", "false (SDK enabled)");
    }
  }
  ReadResource(env, s.resource);
  ReadSampler(env, s);
  for (std::string_view name : {"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"}) {
    std::optional<std::string> v = env.Get(name);
    if (v && Trim(*v) != "http/json")
      env.Warn(name, *v, "only http/json is implemented", "http/json");
  }

  if (std::optional<std::string> v = env.Get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
    const std::string url(Trim(*v));
    if (!IsHttpUrl(url)) {
      env.Warn("OTEL_EXPORTER_OTLP_ENDPOINT", *v, "must be an http:// or https:// URL",
               s.traces.endpoint + " and " + s.logs.endpoint);
    } else {
      s.traces.endpoint = SignalUrl(url, "/v1/traces");
      s.logs.endpoint = SignalUrl(url, "/v1/logs");
    }
  }
  env.Endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", s.traces.endpoint);
  env.Endpoint("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", s.logs.endpoint);

  OtlpHeaders general;
  env.Headers("OTEL_EXPORTER_OTLP_HEADERS", general);
  MergeHeaders(s.traces.headers, general);
  MergeHeaders(s.logs.headers, general);
  env.Headers("OTEL_EXPORTER_OTLP_TRACES_HEADERS", s.traces.headers);
  env.Headers("OTEL_EXPORTER_OTLP_LOGS_HEADERS", s.logs.headers);

  std::chrono::milliseconds timeout = s.traces.timeout;
  if (env.Millis("OTEL_EXPORTER_OTLP_TIMEOUT", 1, timeout))
    s.traces.timeout = s.logs.timeout = timeout;
  env.Millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 1, s.traces.timeout);
  env.Millis("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", 1, s.logs.timeout);

  ReadBatchProcessor(env, "OTEL_BSP_", s.batch, s.traces.export_timeout);
  ReadBatchProcessor(env, "OTEL_BLRP_", s.log_batch, s.logs.export_timeout);
  return out;
}

}  // namespace laneguard
