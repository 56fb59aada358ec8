// Links the installed library and takes and releases one slot.
#include <laneguard/manager.h>

#include <cstdio>

int main() {
  auto manager = laneguard::ResourceBudgetManager::Create(laneguard::Config{});
  if (!manager.ok()) return 1;
  auto slot = (*manager)->TryAcquire("consumer", "tool_call");
  if (!slot.ok() || !slot->Release(true)) return 2;
  std::printf("calls=%lld\n", static_cast<long long>((*manager)->GetStatistics().total_calls));
  return (*manager)->GetStatistics().total_calls == 1 ? 0 : 3;
}
