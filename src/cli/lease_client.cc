#include "cli/lease_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>
#include <utility>

namespace laneguard::cli {
namespace {

using json = nlohmann::json;

constexpr int64_t kConnectTimeoutMs = 5000;
constexpr int64_t kRequestTimeoutMs = 10000;
// A parked acquire answers by waitMs; this much more covers the daemon's own latency.
constexpr int64_t kAcquireMarginMs = 10000;

void GlobalInitCurl() {
  // curl_global_init is not thread-safe in every libcurl build: once per process, here too.
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

size_t WriteBody(char* data, size_t size, size_t count, void* user) {
  static_cast<std::string*>(user)->append(data, size * count);
  return size * count;
}

// Non-zero aborts the transfer: the caller's cancel.
int Progress(void* user, curl_off_t /*dltotal*/, curl_off_t /*dlnow*/, curl_off_t /*ultotal*/,
             curl_off_t /*ulnow*/) {
  const auto* cancel = static_cast<const std::stop_token*>(user);
  return cancel != nullptr && cancel->stop_requested() ? 1 : 0;
}

std::string StringField(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : std::string();
}

int64_t IntField(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && it->is_number() ? it->get<int64_t>() : 0;
}

json ParseObject(const std::string& text) {
  json body = json::parse(text, nullptr, /*allow_exceptions=*/false);
  return body.is_object() ? body : json::object();
}

int64_t MonotonicMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Result<ServerAddress> ParseServerAddress(std::string_view text) {
  ServerAddress address;
  address.text = std::string(text);
  const auto bad = [&](const std::string& why) {
    return Error(ErrorCode::kInvalidArgument, "--server", std::string(text),
                 "--server " + std::string(text) + ": " + why);
  };
  if (text.starts_with("unix:")) {
    address.unix_path = std::string(text.substr(5));
    if (address.unix_path.empty() || address.unix_path[0] != '/')
      return bad("a Unix socket must be an absolute path (unix:/run/laneguard.sock)");
    address.base_url = "http://localhost";
    return address;
  }
  if (!text.starts_with("http://"))
    return bad("expected http://HOST:PORT or unix:/PATH (https is not served)");
  std::string_view rest = text.substr(7);
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.empty() || rest.find_first_of("/?#@ ") != std::string_view::npos)
    return bad("expected http://HOST:PORT with no path");
  const size_t colon = rest.rfind(':');
  const bool has_port =
      colon != std::string_view::npos && rest.find(']', colon) == std::string_view::npos;
  if (has_port) {
    const std::string_view port = rest.substr(colon + 1);
    if (port.empty() || port.size() > 5 ||
        !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoi(std::string(port)) < 1 || std::stoi(std::string(port)) > 65535)
      return bad("the port must be within [1, 65535]");
    if (colon == 0) return bad("no host");
  }
  address.base_url = "http://" + std::string(rest);
  return address;
}

Result<std::string> ReadTokenFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) {
    const int error = errno;
    return Error(ErrorCodeForErrno(error), "--token-file", path,
                 "--token-file " + path + ": " + std::generic_category().message(error));
  }
  // Bounded: the wrong file (/dev/zero, a log) is an error, not a read without end.
  constexpr size_t kMaxTokenBytes = 4096;
  std::string token(kMaxTokenBytes + 1, '\0');
  token.resize(std::fread(token.data(), 1, token.size(), f));
  std::fclose(f);
  const auto space = [](char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; };
  while (!token.empty() && space(token.back())) token.pop_back();
  token.erase(0, std::find_if_not(token.begin(), token.end(), space) - token.begin());
  if (token.empty() || token.size() > kMaxTokenBytes ||
      token.find_first_of(" \t\r\n") != std::string::npos) {
    return Error(ErrorCode::kInvalidArgument, "--token-file", path,
                 "--token-file " + path + ": expected one line holding the token (no spaces, " +
                     "at most 4096 bytes)");
  }
  return token;
}

LeaseClient::LeaseClient(ServerAddress address, const std::string& token)
    : address_(std::move(address)) {
  GlobalInitCurl();
  curl_ = curl_easy_init();
  curl_slist* h = curl_slist_append(nullptr, "Content-Type: application/json");
  h = curl_slist_append(h, "Expect:");  // no 100-continue round trip
  if (!token.empty()) h = curl_slist_append(h, ("Authorization: Bearer " + token).c_str());
  headers_ = h;
}

LeaseClient::~LeaseClient() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
  curl_slist_free_all(static_cast<curl_slist*>(headers_));
}

Result<LeaseClient::Response> LeaseClient::Send(const char* method, const std::string& path,
                                                const std::string& body, int64_t timeout_ms,
                                                const std::stop_token* cancel) {
  CURL* c = static_cast<CURL*>(curl_);
  if (c == nullptr)
    return Error(ErrorCode::kInternal, "--server", address_.text, "curl_easy_init failed");
  Response response;
  const std::string url = address_.base_url + path;
  curl_easy_reset(c);  // keeps the connection cache: requests reuse one connection
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  if (!address_.unix_path.empty())
    curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, address_.unix_path.c_str());
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  if (std::string_view(method) != "GET") {
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, static_cast<curl_slist*>(headers_));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(kConnectTimeoutMs));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout_ms));
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // signals would hit the caller's process
  curl_easy_setopt(c, CURLOPT_PROXY, "");     // never through an http_proxy from the environment
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &WriteBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &response.body);
  if (cancel != nullptr) {
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, &Progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, cancel);
  }
  const CURLcode code = curl_easy_perform(c);
  if (code == CURLE_ABORTED_BY_CALLBACK)
    return Error(ErrorCode::kCancelled, "--server", address_.text, "cancelled");
  if (code != CURLE_OK)
    return Error(
        ErrorCode::kUnavailable, "--server", address_.text,
        "--server " + address_.text + ": cannot reach the daemon: " + curl_easy_strerror(code));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &response.status);
  return response;
}

// A reply the API does not have: say what came back.
Error LeaseClient::Unexpected(const Response& response) const {
  const json body = ParseObject(response.body);
  std::string detail = StringField(body, "error");
  const std::string message = StringField(body, "message");
  if (!message.empty()) detail += (detail.empty() ? "" : ": ") + message;
  if (detail.empty()) detail = response.body.substr(0, 200);
  ErrorCode code = ErrorCode::kInternal;
  if (response.status == 401) code = ErrorCode::kPermissionDenied;
  return Error(code, "--server", address_.text,
               "--server " + address_.text + ": HTTP " + std::to_string(response.status) +
                   (detail.empty() ? "" : ": " + detail));
}

Result<Lease> LeaseClient::Acquire(const LeaseRequest& request, const std::stop_token& cancel) {
  json body = {{"lane", request.lane},
               {"waitMs", request.wait_ms},
               {"priority", ToString(request.priority)},
               {"ttlMs", request.ttl_ms}};
  if (!request.task_id.empty()) body["taskId"] = request.task_id;
  if (request.timeout_ms) body["timeoutMs"] = *request.timeout_ms;
  if (!request.traceparent.empty()) body["traceparent"] = request.traceparent;
  json metadata = json::object();
  for (const auto& [key, value] : request.metadata) metadata[key] = value;
  body["metadata"] = std::move(metadata);
  auto response =
      Send("POST", "/v1/leases", body.dump(-1, ' ', false, json::error_handler_t::replace),
           request.wait_ms + kAcquireMarginMs, &cancel);
  if (!response.ok()) return response.error();
  const json answer = ParseObject(response->body);
  const std::string error = StringField(answer, "error");
  if (response->status == 201) {
    Lease lease;
    lease.id = StringField(answer, "leaseId");
    if (lease.id.empty()) return Unexpected(*response);
    lease.fencing_token = IntField(answer, "fencingToken");
    lease.lane = StringField(answer, "lane");
    lease.task_id = StringField(answer, "taskId");
    lease.ttl_ms = IntField(answer, "ttlMs");
    lease.timeout_ms = IntField(answer, "timeoutMs");
    lease.wait_ms = IntField(answer, "waitMs");
    lease.traceparent = StringField(answer, "traceparent");
    return lease;
  }
  if ((response->status == 429 || response->status == 503) && !error.empty()) {
    std::string message = error;
    if (const std::string text = StringField(answer, "message"); !text.empty())
      message += ": " + text;
    if (answer.contains("retryAfterMs"))
      message += " (retryAfterMs " + std::to_string(IntField(answer, "retryAfterMs")) + ")";
    return Error(response->status == 429 ? ErrorCode::kResourceExhausted : ErrorCode::kUnavailable,
                 std::string(kLeaseRefusalField), error, message);
  }
  if (response->status == 400) {
    const std::string field = StringField(answer, "field");
    return Error(ErrorCode::kInvalidArgument, "request", field,
                 "the daemon refused the request: " + (field.empty() ? "" : field + ": ") +
                     StringField(answer, "message"));
  }
  return Unexpected(*response);
}

Result<RenewAnswer> LeaseClient::Renew(const std::string& lease_id, const std::stop_token& cancel) {
  auto response =
      Send("POST", "/v1/leases/" + lease_id + "/renew", "{}", kRequestTimeoutMs, &cancel);
  if (!response.ok()) return response.error();
  const json answer = ParseObject(response->body);
  RenewAnswer renew;
  if (response->status == 404) {
    renew.gone = true;
    renew.reason = StringField(answer, "reason");
    return renew;
  }
  if (response->status != 200) return Unexpected(*response);
  renew.phase = StringField(answer, "phase");
  auto stop = answer.find("stopRequested");
  renew.stop_requested = stop != answer.end() && stop->is_boolean() && stop->get<bool>();
  return renew;
}

Result<bool> LeaseClient::Release(const std::string& lease_id, const ReleaseOutcome& outcome) {
  json body = {{"outcome", outcome.success ? "success" : "failure"}};
  if (!outcome.error_type.empty()) body["errorType"] = outcome.error_type;
  if (outcome.rss_mb) body["rssMb"] = *outcome.rss_mb;
  auto response = Send("DELETE", "/v1/leases/" + lease_id, body.dump(), kRequestTimeoutMs, nullptr);
  if (!response.ok()) return response.error();
  if (response->status == 404) return false;
  if (response->status != 200) return Unexpected(*response);
  const json answer = ParseObject(response->body);
  auto released = answer.find("released");
  return released != answer.end() && released->is_boolean() && released->get<bool>();
}

Result<std::string> LeaseClient::GetConfigJson() {
  auto response = Send("GET", "/v1/config", "", kRequestTimeoutMs, nullptr);
  if (!response.ok()) return response.error();
  if (response->status != 200) return Unexpected(*response);
  return std::move(response->body);
}

LeaseRenewer::LeaseRenewer(const ServerAddress& address, const std::string& token, Lease lease,
                           std::function<void(const std::string& reason)> on_stop)
    : client_(address, token),
      lease_(std::move(lease)),
      on_stop_(std::move(on_stop)),
      thread_([this] { Loop(); }) {}

LeaseRenewer::~LeaseRenewer() { Stop(); }

void LeaseRenewer::Stop() {
  {
    internal::MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  cancel_.request_stop();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

std::string LeaseRenewer::stop_reason() const {
  internal::MutexLock lock(mu_);
  return reason_;
}

bool LeaseRenewer::stopped_for_time() const {
  internal::MutexLock lock(mu_);
  return for_time_;
}

bool LeaseRenewer::gone() const {
  internal::MutexLock lock(mu_);
  return gone_;
}

void LeaseRenewer::Loop() {
  const int64_t ttl = std::max<int64_t>(lease_.ttl_ms, 100);
  int64_t last_ok = MonotonicMs();
  bool healthy = true;
  for (;;) {
    {
      internal::MutexLock lock(mu_);
      const std::chrono::milliseconds every(healthy ? ttl / 3 : ttl / 10);
      cv_.WaitFor(lock, every, [&]() REQUIRES(mu_) { return stopping_; });
      if (stopping_ || gone_) return;
    }
    auto answer = client_.Renew(lease_.id, cancel_.get_token());
    healthy = answer.ok();
    if (healthy) {
      last_ok = MonotonicMs();
      if (answer->gone) {
        {
          internal::MutexLock lock(mu_);
          gone_ = true;
        }
        RequestStop("the lease is gone on the daemon (" +
                        (answer->reason.empty() ? std::string("lease_not_found") : answer->reason) +
                        ")",
                    false);
      } else if (answer->stop_requested) {
        const bool for_time = answer->phase == "warning" || answer->phase == "hard";
        RequestStop(
            for_time
                ? "the daemon asked to stop: the lease reached its " + answer->phase + " phase"
                : "the daemon asked to stop (phase " + answer->phase + ", it is shutting down)",
            for_time);
      }
    } else if (answer.error().code() != ErrorCode::kCancelled &&
               MonotonicMs() - last_ok > ttl / 2) {
      RequestStop("lease renewals have failed for " + std::to_string(MonotonicMs() - last_ok) +
                      " ms: " + answer.error().message(),
                  false);
    }
  }
}

void LeaseRenewer::RequestStop(const std::string& reason, bool for_time) {
  {
    internal::MutexLock lock(mu_);
    if (!reason_.empty()) return;
    reason_ = reason;
    for_time_ = for_time;
  }
  on_stop_(reason);
}

}  // namespace laneguard::cli
