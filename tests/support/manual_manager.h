// A test fixture with a manager on a ManualClock and a fake memory probe (no background thread:
// timers fire and memory is sampled only when the test says), and a JSON logger into a tmpfile.
#ifndef LANEGUARD_TESTS_SUPPORT_MANUAL_MANAGER_H_
#define LANEGUARD_TESTS_SUPPORT_MANUAL_MANAGER_H_

#include <gtest/gtest.h>

#include <memory>
#include <string_view>

#include "laneguard/manager.h"
#include "laneguard/observe/json_logger.h"
#include "support/fake_memory_probe.h"
#include "support/tmp_stream.h"

namespace laneguard::testing_support {

class ManualManagerTest : public ::testing::Test {
 protected:
  void MakeManager(Config config) {
    ManagerOptions options;
    options.clock = &clock_;
    options.memory_probe = std::make_unique<FakeMemoryProbe>(figures_);
    options.start_background_thread = false;
    manager_ = ResourceBudgetManager::Create(std::move(config), std::move(options)).value();
    manager_->SampleMemoryNow();
    logger_ = std::make_shared<JsonLogger>(JsonLogger::Options{.clock = &clock_}, log_.get());
  }

  // `n` calls in `lane`, each lasting `ms` on the manual clock.
  void Calls(std::string_view lane, int n, int64_t ms, bool success) {
    for (int i = 0; i < n; ++i) {
      auto slot = manager_->TryAcquire("task", lane);
      ASSERT_TRUE(slot.ok());
      clock_.AdvanceMs(ms);
      slot->Release(success);
    }
  }

  ManualClock clock_;
  std::shared_ptr<FakeMemoryProbe::Figures> figures_ = std::make_shared<FakeMemoryProbe::Figures>();
  std::unique_ptr<ResourceBudgetManager> manager_;
  TmpStream log_;
  std::shared_ptr<JsonLogger> logger_;
};

}  // namespace laneguard::testing_support

#endif  // LANEGUARD_TESTS_SUPPORT_MANUAL_MANAGER_H_
