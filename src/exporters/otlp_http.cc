#include <curl/curl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <utility>

#include "exporters/otlp_http_client.h"
#include "laneguard/exporters/otlp.h"

namespace laneguard {

namespace {

void GlobalInitCurl() {
  // curl_global_init is not thread-safe in every libcurl build: once per process.
  static const bool done = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return true;
  }();
  (void)done;
}

size_t WriteBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

size_t ReadHeader(char* data, size_t size, size_t n, void* user) {
  std::string_view line(data, size * n);
  constexpr std::string_view kName = "retry-after:";
  if (line.size() > kName.size()) {
    std::string lower(line.substr(0, kName.size()));
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (lower == kName) {
      std::string_view v = line.substr(kName.size());
      while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
      while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' '))
        v.remove_suffix(1);
      *static_cast<std::string*>(user) = std::string(v);
    }
  }
  return size * n;
}

// Returning non-zero aborts the transfer: how Shutdown() cuts a request short.
int Progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<std::atomic<bool>*>(user)->load(std::memory_order_relaxed) ? 1 : 0;
}

curl_socket_t OpenSocket(void* self, curlsocktype, curl_sockaddr* address) {
  // CLOEXEC: laneguard forks the commands it runs, which must not inherit the connection.
  const int fd = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
  if (fd < 0) return CURL_SOCKET_BAD;
  static_cast<OtlpHttpClient*>(self)->TrackSocket(fd);
  return fd;
}

int CloseSocket(void* self, curl_socket_t fd) {
  static_cast<OtlpHttpClient*>(self)->UntrackSocket(fd);
  return 0;
}

// A 64-bit count that proto3 JSON writes as a string and some receivers as a number.
uint64_t JsonCount(const nlohmann::json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) return static_cast<uint64_t>(std::max<int64_t>(v.get<int64_t>(), 0));
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    uint64_t out = 0;
    std::from_chars(s.data(), s.data() + s.size(), out);
    return out;
  }
  return 0;
}

std::string Excerpt(const std::string& body) {
  return body.size() <= 200 ? body : body.substr(0, 200) + "...";
}

constexpr double kYearMs = 365.0 * 24 * 3600 * 1000;

}  // namespace

// For ExportResult::error: curl's words for a failure without a response, else the status.
std::string OtlpHttpClient::Failure(const Response& r) {
  if (r.status != 0) return "HTTP " + std::to_string(r.status);
  return r.error.empty() ? "no response" : r.error;
}

bool IsRetryableHttpStatus(int status) {
  return status == 429 || status == 502 || status == 503 || status == 504;
}

std::chrono::milliseconds OtlpBackoff(const OtlpRetryPolicy& p, int retry, double random01) {
  const double initial = static_cast<double>(std::max<int64_t>(p.initial_backoff.count(), 0));
  const double cap = static_cast<double>(std::max<int64_t>(p.max_backoff.count(), 0));
  const double multiplier = std::max(p.multiplier, 1.0);
  // Capping the exponent first keeps pow() finite for any retry number.
  const double grown = initial * std::pow(multiplier, std::clamp(retry - 1, 0, 64));
  const double base = std::min(std::isfinite(grown) ? grown : cap, cap);
  const double jitter = std::clamp(p.jitter, 0.0, 1.0);
  const double r = std::clamp(random01, 0.0, 1.0);
  const double ms = base * (1.0 - jitter + 2.0 * jitter * r);
  // A year bounds the cast (a double past int64 would be undefined) and is forever here anyway.
  return std::chrono::milliseconds(static_cast<int64_t>(std::clamp(ms, 0.0, kYearMs)));
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value,
                                                         int64_t now_unix_seconds) {
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    int64_t seconds = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
    // Past a day the number is as good as forever; the export deadline gives up on it anyway.
    if (ec == std::errc::result_out_of_range || seconds > 86400) seconds = 86400;
    return std::chrono::seconds(seconds);
  }
  // HTTP-date (IMF-fixdate, and the obsolete forms curl_getdate also reads). It must name a
  // weekday, so that stray text that curl_getdate would read as a time of day is refused.
  if (value.size() < 16 || value.find(',') == std::string_view::npos) return std::nullopt;
  const std::string text(value);
  const time_t when = curl_getdate(text.c_str(), nullptr);
  if (when == -1) return std::nullopt;
  return std::chrono::seconds(std::max<int64_t>(static_cast<int64_t>(when) - now_unix_seconds, 0));
}

OtlpHttpClient::OtlpHttpClient(OtlpHttpExporterOptions options, std::string rejected_field,
                               std::string items)
    : options_(std::move(options)),
      rejected_field_(std::move(rejected_field)),
      items_(std::move(items)),
      rng_(std::random_device{}()) {
  GlobalInitCurl();
  if (options_.clock == nullptr) options_.clock = &SystemClock::Get();
  if (!options_.logger)
    options_.logger =
        std::make_shared<JsonLogger>(JsonLogger::Options{.min_level = LogLevel::kWarning});
  curl_ = curl_easy_init();
  // Set once: curl_easy_reset in Post keeps the connection cache but clears options, so they are
  // set again there too; the cached connections close through CloseSocket either way.
  if (curl_ != nullptr) SetSocketCallbacks(curl_);
  curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
  // Without this, curl asks for 100-continue on large bodies and waits up to a second for it.
  h = curl_slist_append(h, "Expect:");
  for (const auto& [name, value] : options_.headers)
    h = curl_slist_append(h, (name + ": " + value).c_str());
  headers_ = h;
}

OtlpHttpClient::~OtlpHttpClient() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
  curl_slist_free_all(static_cast<curl_slist*>(headers_));
}

OtlpHttpClient::Response OtlpHttpClient::Post(const std::string& body,
                                              std::chrono::milliseconds timeout) {
  Response r;
  CURL* c = static_cast<CURL*>(curl_);
  if (c == nullptr) {
    r.error = "curl_easy_init failed";
    return r;
  }
  curl_easy_reset(c);  // keeps the connection cache: requests reuse one connection
  const long timeout_ms = static_cast<long>(std::max<int64_t>(timeout.count(), 1));
  curl_easy_setopt(c, CURLOPT_URL, options_.endpoint.c_str());
  curl_easy_setopt(c, CURLOPT_POST, 1L);
  curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(headers_));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // signals would hit the caller's process
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &WriteBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &ReadHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r.retry_after);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, &Progress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &cancelled_);
  SetSocketCallbacks(c);
  const CURLcode code = curl_easy_perform(c);
  if (code != CURLE_OK) {
    // Cut short by Cancel(): not the receiver's failure, nothing to report.
    if (!cancelled_.load()) r.error = curl_easy_strerror(code);
    r.retry_after.clear();
    return r;
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  r.status = static_cast<int>(status);
  return r;
}

void OtlpHttpClient::Wait(std::chrono::milliseconds delay) {
  if (options_.sleep) {
    options_.sleep(delay);
    return;
  }
  internal::MutexLock lock(wait_mu_);
  wait_cv_.WaitFor(lock, delay, [this] { return cancelled_.load(); });
}

void OtlpHttpClient::Cancel() {
  {
    internal::MutexLock lock(wait_mu_);
    cancelled_.store(true);
  }
  wait_cv_.NotifyAll();
  internal::MutexLock lock(sockets_mu_);
  for (int fd : sockets_) shutdown(fd, SHUT_RDWR);  // wakes curl's poll at once
}

void OtlpHttpClient::SetSocketCallbacks(void* curl) {
  CURL* c = static_cast<CURL*>(curl);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, &OpenSocket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, this);
  curl_easy_setopt(c, CURLOPT_CLOSESOCKETFUNCTION, &CloseSocket);
  curl_easy_setopt(c, CURLOPT_CLOSESOCKETDATA, this);
}

void OtlpHttpClient::TrackSocket(int fd) {
  internal::MutexLock lock(sockets_mu_);
  sockets_.push_back(fd);
  // Cancelled meanwhile: this connection must not wait either.
  if (cancelled_.load()) shutdown(fd, SHUT_RDWR);
}

void OtlpHttpClient::UntrackSocket(int fd) {
  // Closed under the lock, so that Cancel() never shuts down a number already reused.
  internal::MutexLock lock(sockets_mu_);
  sockets_.erase(std::remove(sockets_.begin(), sockets_.end(), fd), sockets_.end());
  close(fd);
}

void OtlpHttpClient::Count(uint64_t OtlpExporterStats::*field, uint64_t n, int status) {
  internal::MutexLock lock(stats_mu_);
  stats_.*field += n;
  stats_.last_http_status = status;
}

OtlpExporterStats OtlpHttpClient::stats() const {
  internal::MutexLock lock(stats_mu_);
  return stats_;
}

uint64_t OtlpHttpClient::PartiallyRejected(const Response& r, uint64_t items) const {
  uint64_t rejected = 0;
  const nlohmann::json reply = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (!reply.is_object() || !reply.contains("partialSuccess") ||
      !reply["partialSuccess"].is_object())
    return 0;
  const nlohmann::json& ps = reply["partialSuccess"];
  if (ps.contains(rejected_field_)) rejected = std::min(JsonCount(ps[rejected_field_]), items);
  const std::string message = ps.contains("errorMessage") && ps["errorMessage"].is_string()
                                  ? ps["errorMessage"].get<std::string>()
                                  : "";
  if (rejected > 0 || !message.empty())
    options_.logger->LogWarning("OTLP export partially rejected",
                                {{"endpoint", options_.endpoint},
                                 {"signal", items_},
                                 {"rejected", static_cast<int64_t>(rejected)},
                                 {"items", static_cast<int64_t>(items)},
                                 {"errorMessage", message}});
  return rejected;
}

std::chrono::milliseconds OtlpHttpClient::RetryDelay(const Response& r, int attempt) {
  if (!r.retry_after.empty()) {
    if (auto wait = ParseRetryAfter(r.retry_after, options_.clock->UnixNanos() / 1'000'000'000))
      return *wait;
  }
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  return OtlpBackoff(options_.retry, attempt, options_.random ? options_.random() : unit(rng_));
}

ExportResult OtlpHttpClient::Send(const std::string& body, uint64_t items) {
  using Code = ExportResult::Code;
  // Clamped so that the nanosecond sums below cannot overflow.
  const auto year = std::chrono::milliseconds(static_cast<int64_t>(kYearMs));
  const int64_t deadline =
      NowNanos() + std::chrono::nanoseconds(
                       std::clamp(options_.export_timeout, std::chrono::milliseconds(0), year))
                       .count();
  const int max_attempts = std::max(options_.retry.max_attempts, 1);
  Response r;
  std::string why;
  for (int attempt = 1;; ++attempt) {
    if (cancelled_.load()) break;
    const auto remaining = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::nanoseconds(deadline - NowNanos()));
    if (remaining.count() <= 0) {
      why = "export timeout reached";
      break;
    }
    r = Post(body, std::min(options_.timeout, remaining));
    {
      internal::MutexLock lock(stats_mu_);
      ++stats_.requests;
      if (attempt > 1) ++stats_.retries;
    }
    if (cancelled_.load()) break;
    if (r.status >= 200 && r.status < 300) {
      const uint64_t rejected = PartiallyRejected(r, items);
      internal::MutexLock lock(stats_mu_);
      stats_.items_exported += items - rejected;
      stats_.items_partial_rejected += rejected;
      stats_.last_http_status = r.status;
      return {Code::kSuccess, rejected};
    }
    const bool retryable = r.status == 0 || IsRetryableHttpStatus(r.status);
    if (!retryable) {
      options_.logger->LogWarning("OTLP export rejected", {{"endpoint", options_.endpoint},
                                                           {"signal", items_},
                                                           {"status", int64_t{r.status}},
                                                           {"items", static_cast<int64_t>(items)},
                                                           {"response", Excerpt(r.body)}});
      Count(&OtlpExporterStats::items_rejected, items, r.status);
      return {Code::kRejected, 0, 0, Failure(r)};
    }
    if (attempt >= max_attempts) {
      why = "no attempts left";
      break;
    }
    const std::chrono::milliseconds wait = RetryDelay(r, attempt);
    if (NowNanos() + std::chrono::nanoseconds(wait).count() >= deadline) {
      why = "the next retry would end past the export timeout";
      break;
    }
    Wait(wait);
  }
  if (cancelled_.load()) {
    Count(&OtlpExporterStats::items_cancelled, items, r.status);
    // The last attempt's failure, if one was made: why the batch was still here at shutdown.
    return {Code::kCancelled, 0, 0, r.status == 0 && r.error.empty() ? "" : Failure(r)};
  }
  options_.logger->LogWarning("OTLP export failed, retries exhausted",
                              {{"endpoint", options_.endpoint},
                               {"signal", items_},
                               {"status", int64_t{r.status}},
                               {"error", r.error},
                               {"reason", why},
                               {"items", static_cast<int64_t>(items)}});
  Count(&OtlpExporterStats::items_retries_exhausted, items, r.status);
  return {Code::kRetriesExhausted, 0, 0, Failure(r)};
}

// ---- exporters ----------------------------------------------------------------------------------

namespace {

std::optional<Error> CheckEndpoint(const std::string& endpoint) {
  if (endpoint.rfind("http://", 0) == 0 || endpoint.rfind("https://", 0) == 0) return std::nullopt;
  return Error{ErrorCode::kInvalidArgument, "endpoint", nlohmann::json(endpoint).dump(),
               "OTLP endpoint '" + endpoint + "' must be an http:// or https:// URL"};
}

}  // namespace

Result<std::unique_ptr<OtlpHttpSpanExporter>> OtlpHttpSpanExporter::Create(
    OtlpHttpExporterOptions options) {
  if (auto error = CheckEndpoint(options.endpoint)) return *error;
  return std::unique_ptr<OtlpHttpSpanExporter>(new OtlpHttpSpanExporter(
      std::make_unique<OtlpHttpClient>(std::move(options), "rejectedSpans", "spans")));
}

OtlpHttpSpanExporter::OtlpHttpSpanExporter(std::unique_ptr<OtlpHttpClient> client)
    : client_(std::move(client)) {}
OtlpHttpSpanExporter::~OtlpHttpSpanExporter() = default;

bool OtlpHttpSpanExporter::Export(const std::vector<SpanData>& batch, const Resource& resource) {
  return ExportWithResult(batch, resource).code == ExportResult::Code::kSuccess;
}

ExportResult OtlpHttpSpanExporter::ExportWithResult(const std::vector<SpanData>& batch,
                                                    const Resource& resource) {
  if (batch.empty()) return {};
  return client_->Send(EncodeOtlpTracesJson(batch, resource), batch.size());
}

void OtlpHttpSpanExporter::Shutdown() { client_->Cancel(); }
OtlpExporterStats OtlpHttpSpanExporter::stats() const { return client_->stats(); }

Result<std::unique_ptr<OtlpHttpLogExporter>> OtlpHttpLogExporter::Create(
    OtlpHttpExporterOptions options) {
  if (auto error = CheckEndpoint(options.endpoint)) return *error;
  return std::unique_ptr<OtlpHttpLogExporter>(new OtlpHttpLogExporter(
      std::make_unique<OtlpHttpClient>(std::move(options), "rejectedLogRecords", "logs")));
}

OtlpHttpLogExporter::OtlpHttpLogExporter(std::unique_ptr<OtlpHttpClient> client)
    : client_(std::move(client)) {}
OtlpHttpLogExporter::~OtlpHttpLogExporter() = default;

ExportResult OtlpHttpLogExporter::Export(const std::vector<LogRecord>& batch,
                                         const Resource& resource) {
  if (batch.empty()) return {};
  return client_->Send(EncodeOtlpLogsJson(batch, resource), batch.size());
}

void OtlpHttpLogExporter::Shutdown() { client_->Cancel(); }
OtlpExporterStats OtlpHttpLogExporter::stats() const { return client_->stats(); }

}  // namespace laneguard
