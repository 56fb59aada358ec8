// The embeddable /metrics server, on cpp-httplib (Debian's libcpp-httplib-dev). prometheus-cpp's
// own Exposer is not used because it always answers in the text format: it cannot negotiate
// OpenMetrics.
#include <arpa/inet.h>
#include <httplib.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "laneguard/prometheus.h"

namespace laneguard {
namespace {

ConfigError HostError(std::string_view key, const std::string& host) {
  const std::string value = "\"" + host + "\"";
  return ConfigError{std::string(key), value,
                     "option '" + std::string(key) + "' = " + value +
                         ": not an IPv4 or IPv6 address (or \"localhost\")"};
}

ConfigError PortError(std::string_view key, std::string_view port) {
  const std::string value(port);
  return ConfigError{std::string(key), value,
                     "option '" + std::string(key) + "' = " + value +
                         ": port must be an integer in [0, 65535] (0 picks a free port)"};
}

// True for an IPv4 or IPv6 literal.
bool IsAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

Result<MetricsServerOptions, ConfigError> ParseListenAddress(std::string_view text,
                                                             std::string_view key) {
  const std::string whole(text);
  const std::string value = "\"" + whole + "\"";
  const auto bad = [&](const std::string& why) {
    return ConfigError{std::string(key), value,
                       "option '" + std::string(key) + "' = " + value + ": " + why};
  };
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("expected HOST:PORT, e.g. 127.0.0.1:9464");
  std::string_view host = text.substr(0, colon);
  const std::string_view port = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("an IPv6 host must be in brackets, e.g. [::1]:9464");
  }
  MetricsServerOptions options;
  options.host = std::string(host);
  if (options.host != "localhost" && !IsAddress(options.host)) {
    return bad("'" + options.host + "' is not an IPv4 or IPv6 address (or localhost)");
  }
  int p = -1;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || p < 0 || p > 65535) {
    return bad("port '" + std::string(port) + "' must be an integer in [0, 65535]");
  }
  options.port = p;
  return options;
}

struct MetricsServer::Impl {
  std::shared_ptr<const PrometheusCollector> collector;
  std::string host;
  int port = 0;
  httplib::Server server;
  std::thread thread;
  std::atomic<bool> loop_ended{false};
  std::mutex stop_mu;
};

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MetricsServer::~MetricsServer() { Stop(); }

Result<std::unique_ptr<MetricsServer>, ConfigError> MetricsServer::Start(
    std::shared_ptr<const PrometheusCollector> collector, MetricsServerOptions options) {
  if (collector == nullptr) {
    return ConfigError{"collector", "null", "MetricsServer needs a collector, got null"};
  }
  std::string host = options.host == "localhost" ? "127.0.0.1" : options.host;
  if (!IsAddress(host)) return HostError("host", options.host);
  if (options.port < 0 || options.port > 65535) {
    return PortError("port", std::to_string(options.port));
  }
  if (options.path.empty() || options.path.front() != '/') {
    const std::string value = "\"" + options.path + "\"";
    return ConfigError{"path", value, "option 'path' = " + value + ": must start with '/'"};
  }

  auto impl = std::make_unique<Impl>();
  impl->collector = std::move(collector);
  impl->host = host;
  Impl* raw = impl.get();
  // The path is matched exactly: httplib takes a regular expression, so escape it.
  std::string pattern;
  for (char ch : options.path) {
    if (std::string_view(".^$|()[]{}*+?\\").find(ch) != std::string_view::npos) pattern += '\\';
    pattern += ch;
  }
  raw->server.Get(pattern, [raw](const httplib::Request& request, httplib::Response& response) {
    MetricsResponse r = raw->collector->Handle(request.get_header_value("Accept"));
    response.status = r.status;
    response.set_content(r.body, r.content_type.c_str());
  });
  // httplib's default also sets SO_REUSEPORT, which would let a second server bind a port already
  // in use and silently share it; SO_REUSEADDR alone only allows a quick restart.
  raw->server.set_socket_options([](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  if (options.port == 0) {
    raw->port = raw->server.bind_to_any_port(host);
  } else {
    raw->port = raw->server.bind_to_port(host, options.port) ? options.port : -1;
  }
  if (raw->port <= 0) {
    const std::string value = host + ":" + std::to_string(options.port);
    return ConfigError{"port", std::to_string(options.port),
                       "metrics server could not listen on " + value +
                           " (address in use, not permitted, or not on this host)"};
  }
  raw->thread = std::thread([raw] {
    raw->server.listen_after_bind();
    raw->loop_ended.store(true);
  });
  // stop() before the serving loop has started would be lost, so Start returns only once it runs.
  while (!raw->server.is_running() && !raw->loop_ended.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!raw->server.is_running()) {
    raw->thread.join();
    return ConfigError{"port", std::to_string(raw->port),
                       "metrics server on " + host + ":" + std::to_string(raw->port) +
                           " stopped as soon as it started"};
  }
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

const std::string& MetricsServer::host() const { return impl_->host; }
int MetricsServer::port() const { return impl_->port; }

void MetricsServer::Stop() {
  std::lock_guard<std::mutex> guard(impl_->stop_mu);
  if (!impl_->thread.joinable()) return;
  impl_->server.stop();
  impl_->thread.join();
}

}  // namespace laneguard
