#include "core/ticker.h"

#include <utility>

namespace laneguard::internal {

void Ticker::Start(std::chrono::milliseconds period, std::function<void()> tick) {
  MutexLock lock(join_mu_);
  thread_ = std::thread([this, period, tick = std::move(tick)] { Run(period, tick); });
}

void Ticker::Run(std::chrono::milliseconds period, const std::function<void()>& tick) {
  MutexLock lock(mu_);
  while (!stop_) {
    cv_.WaitUntil(lock, std::chrono::steady_clock::now() + period);
    if (stop_) break;
    lock.Unlock();
    tick();
    lock.Lock();
  }
}

void Ticker::Stop() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  cv_.NotifyAll();
  MutexLock lock(join_mu_);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

}  // namespace laneguard::internal
