// Links the installed laneguard::prometheus component and serializes one call.
#include <laneguard/exporters/prometheus.h>

#include <cstdio>
#include <string>

int main() {
  auto manager = laneguard::ResourceBudgetManager::Create(laneguard::Config{});
  if (!manager.ok()) return 1;
  auto collector = laneguard::PrometheusCollector::Create(manager->get());
  if (!collector.ok()) return 2;
  if (!(*manager)->TryAcquire("consumer", "tool_call")->Release(true)) return 3;
  const std::string text = (*collector)->Serialize(laneguard::ExpositionFormat::kText004);
  std::printf("%zu bytes\n", text.size());
  return text.find("laneguard_calls_total{lane=\"tool_call\",outcome=\"success\"} 1") !=
                 std::string::npos
             ? 0
             : 4;
}
