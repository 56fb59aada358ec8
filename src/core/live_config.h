// Which config keys a running manager can change (ResourceBudgetManager::UpdateConfig), and the
// error for a change that cannot be made live.
//
// Live: every limit and threshold read per admission or per sample: globalConcurrencyLimit (up to
// the most the admission word was laid out for), the values of laneConcurrencyLimits, the queue,
// aging, quota and lending keys, defaultTimeoutMs and timeoutEscalationFactor (for calls admitted
// after), maxRssMb, heapWarningMb, enableMemoryGuards and memorySampleIntervalMs.
// Not live (fixed when the manager starts): the set of lanes (their numbers index every per-lane
// table), metricsCapacity (sizes the record rings), timerTickMs (the background thread's period),
// enableSpanEmission and spanSampleRate (read once, when a tracer is made from the config).
//
// Thread safety: a pure function.
#ifndef LANEGUARD_SRC_CORE_LIVE_CONFIG_H_
#define LANEGUARD_SRC_CORE_LIVE_CONFIG_H_

#include <optional>

#include "laneguard/config.h"
#include "laneguard/error.h"

namespace laneguard::internal {

// The first key that `to` (valid) changes from `from` and that cannot change live, or a global
// limit above `max_global_limit`: an error naming the key, the new and the current value.
std::optional<Error> CheckLiveChange(const Config& from, const Config& to, int max_global_limit);

}  // namespace laneguard::internal

#endif  // LANEGUARD_SRC_CORE_LIVE_CONFIG_H_
