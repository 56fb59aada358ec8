// The HTTP side of both OTLP exporters: one libcurl handle (kept alive between requests), the
// retry loop and its waits, partialSuccess parsing, and the counters.
//
// Thread safety: Send from one thread at a time (the exporter's contract); Cancel and stats from
// any thread.
#ifndef LANEGUARD_SRC_EXPORTERS_OTLP_HTTP_CLIENT_H_
#define LANEGUARD_SRC_EXPORTERS_OTLP_HTTP_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "laneguard/exporters/otlp.h"
#include "laneguard/internal/mutex.h"

namespace laneguard {

class OtlpHttpClient {
 public:
  // `rejected_field` is the partialSuccess counter's name ("rejectedSpans"), `items` the word for
  // the logs ("spans").
  OtlpHttpClient(OtlpHttpExporterOptions options, std::string rejected_field, std::string items);
  ~OtlpHttpClient();
  OtlpHttpClient(const OtlpHttpClient&) = delete;
  OtlpHttpClient& operator=(const OtlpHttpClient&) = delete;

  // Posts `body`, which holds `items` items, by the delivery rules in otlp.h.
  ExportResult Send(const std::string& body, uint64_t items);
  void Cancel();
  OtlpExporterStats stats() const;

  // curl's socket callbacks: the sockets it has open, so that Cancel() can shut them down and a
  // request waiting on a silent receiver ends at once, not at curl's next progress check (up to a
  // second later). Untrack closes the socket.
  void TrackSocket(int fd);
  void UntrackSocket(int fd);

 private:
  struct Response {
    int status = 0;  // 0: no HTTP response (connection failure, timeout, cancel)
    std::string body;
    std::string retry_after;
    std::string error;
  };
  static std::string Failure(const Response& r);
  void SetSocketCallbacks(void* curl);  // CURL*
  Response Post(const std::string& body, std::chrono::milliseconds timeout);
  void Wait(std::chrono::milliseconds delay);
  // The items a 2xx reply's partialSuccess says were rejected (logged when any, or a message).
  uint64_t PartiallyRejected(const Response& r, uint64_t items) const;
  // How long to wait before the next attempt: the reply's Retry-After, else the backoff.
  std::chrono::milliseconds RetryDelay(const Response& r, int attempt);
  void Count(uint64_t OtlpExporterStats::*field, uint64_t n, int status);
  int64_t NowNanos() const { return options_.clock->MonotonicNanos(); }

  OtlpHttpExporterOptions options_;
  const std::string rejected_field_;
  const std::string items_;
  void* curl_ = nullptr;     // CURL*; curl.h stays out of this header
  void* headers_ = nullptr;  // curl_slist*
  std::mt19937_64 rng_;
  std::atomic<bool> cancelled_{false};
  // Guards no field: Cancel() sets cancelled_ under it, so a Wait() about to sleep sees it.
  internal::Mutex wait_mu_;
  internal::CondVar wait_cv_;
  internal::Mutex sockets_mu_;
  std::vector<int> sockets_ GUARDED_BY(sockets_mu_);
  mutable internal::Mutex stats_mu_;
  OtlpExporterStats stats_ GUARDED_BY(stats_mu_);
};

}  // namespace laneguard

#endif  // LANEGUARD_SRC_EXPORTERS_OTLP_HTTP_CLIENT_H_
