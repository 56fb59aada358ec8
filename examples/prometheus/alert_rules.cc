// Prints laneguard's Prometheus alerting rules (the defaults) to stdout:
//   build/bin/laneguard_alert_rules > examples/prometheus/laneguard-alerts.yml
#include <cstdio>
#include <string>

#include "laneguard/exporters/prometheus.h"

int main() {
  const std::string yaml = laneguard::GenerateAlertRulesYaml();
  return std::fwrite(yaml.data(), 1, yaml.size(), stdout) == yaml.size() ? 0 : 1;
}
