// A client of `laneguard serve`'s lease API (docs/serve.md) on libcurl: take a lease, renew it,
// release it, read the daemon's config. One easy handle per client, reused between requests, so
// they share one keep-alive connection.
//
// Errors. A failure to talk to the daemon at all (no connection, a timeout, a reply that is not
// the API's) has field "--server" and names the URL. A refusal (429, 503) has field "lease", the
// daemon's code as its value ("lane_limit", "wait_timeout", ...) and its message and retryAfterMs
// in the message. A request the daemon calls invalid (400) has field "request" and the daemon's
// field and message. A cancel has code kCancelled.
//
// Thread safety: one thread at a time per client (a libcurl easy handle is not shared); give each
// thread (the renewing one, say) a client of its own.
#ifndef LANEGUARD_SRC_CLI_LEASE_CLIENT_H_
#define LANEGUARD_SRC_CLI_LEASE_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>

#include "laneguard/internal/mutex.h"
#include "laneguard/manager.h"
#include "laneguard/observer.h"
#include "laneguard/result.h"

namespace laneguard::cli {

// Where the daemon listens: "http://HOST:PORT" (a trailing '/' is dropped) or "unix:/PATH".
struct ServerAddress {
  std::string text;       // as given, for messages
  std::string base_url;   // "http://127.0.0.1:7878", or "http://localhost" over a Unix socket
  std::string unix_path;  // "" over TCP
};
// Errors name "--server" and the value.
Result<ServerAddress> ParseServerAddress(std::string_view text);

struct LeaseRequest {
  std::string lane;
  std::string task_id;
  std::optional<int64_t> timeout_ms;  // the lane's defaultTimeoutMs when unset
  int64_t wait_ms = 0;                // 0: answered at once
  Priority priority = Priority::kNormal;
  int64_t ttl_ms = 15000;
  Metadata metadata;
  std::string traceparent;  // "" sends none
};

struct Lease {
  std::string id;
  int64_t fencing_token = 0;
  std::string lane;
  std::string task_id;
  int64_t ttl_ms = 0;
  int64_t timeout_ms = 0;
  int64_t wait_ms = 0;
  std::string traceparent;  // the daemon's lease span
};

struct RenewAnswer {
  bool gone = false;  // 404: released, expired or reclaimed (reason says which, when known)
  std::string reason;
  std::string phase;  // "running", "warning", "hard"
  bool stop_requested = false;
};

struct ReleaseOutcome {
  bool success = true;
  std::string error_type;
  std::optional<double> rss_mb;
};

// The refusal reasons the daemon may answer with; a refused Acquire's error has one as its value.
inline constexpr std::string_view kLeaseRefusalField = "lease";

class LeaseClient {
 public:
  // `token`: sent as "Authorization: Bearer <token>" when not empty.
  LeaseClient(ServerAddress address, const std::string& token);
  ~LeaseClient();
  LeaseClient(const LeaseClient&) = delete;
  LeaseClient& operator=(const LeaseClient&) = delete;

  // POST /v1/leases. `cancel` abandons a parked wait (the daemon drops the request as the
  // connection closes).
  Result<Lease> Acquire(const LeaseRequest& request, const std::stop_token& cancel = {});
  // POST /v1/leases/{id}/renew; a 404 is an answer (gone), not an error. `cancel` ends a
  // request the daemon is slow to answer.
  Result<RenewAnswer> Renew(const std::string& lease_id, const std::stop_token& cancel = {});
  // DELETE /v1/leases/{id}: true when this call released it, false when it had ended already.
  Result<bool> Release(const std::string& lease_id, const ReleaseOutcome& outcome);
  // GET /v1/config: the config JSON in effect.
  Result<std::string> GetConfigJson();

  const ServerAddress& address() const { return address_; }

 private:
  struct Response {
    long status = 0;
    std::string body;
  };
  Result<Response> Send(const char* method, const std::string& path, const std::string& body,
                        int64_t timeout_ms, const std::stop_token* cancel);
  Error Unexpected(const Response& response) const;

  ServerAddress address_;
  void* curl_ = nullptr;     // CURL*; curl.h stays out of this header
  void* headers_ = nullptr;  // curl_slist*
};

// Keeps a lease alive: renews it every ttl/3 (after a failure, every ttl/10) on a thread of its
// own, with a client of its own, until Stop(). Calls `on_stop` once, on that thread, with a reason
// for a human, when the command under the lease must stop: the daemon says stopRequested (its
// warning phase, or a drain), the lease is gone (404), or renewals have failed for longer than
// ttl/2 (the daemon would soon reclaim the slot).
//
// Thread safety: Stop() and the accessors from any thread; Stop() is idempotent.
class LeaseRenewer {
 public:
  LeaseRenewer(const ServerAddress& address, const std::string& token, Lease lease,
               std::function<void(const std::string& reason)> on_stop);
  ~LeaseRenewer();  // Stop()
  LeaseRenewer(const LeaseRenewer&) = delete;
  LeaseRenewer& operator=(const LeaseRenewer&) = delete;

  void Stop();
  // Why on_stop was called ("" if it was not), and whether for the lease's time (its warning or
  // hard phase) rather than a lost lease or a drain.
  std::string stop_reason() const;
  bool stopped_for_time() const;
  // The lease ended on the daemon's side (404): releasing it would find nothing.
  bool gone() const;

 private:
  void Loop();
  void RequestStop(const std::string& reason, bool for_time);

  LeaseClient client_;
  const Lease lease_;
  const std::function<void(const std::string&)> on_stop_;
  std::stop_source cancel_;  // ends a renew in flight at Stop()
  mutable internal::Mutex mu_;
  internal::CondVar cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::string reason_ GUARDED_BY(mu_);
  bool for_time_ GUARDED_BY(mu_) = false;
  bool gone_ GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the rest is set up
};

// Reads a bearer token from `path` (surrounding whitespace dropped); errors name "--token-file".
Result<std::string> ReadTokenFile(const std::string& path);

}  // namespace laneguard::cli

#endif  // LANEGUARD_SRC_CLI_LEASE_CLIENT_H_
