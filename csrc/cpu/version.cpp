#include "mbpo_fast/common.h"

namespace mbpo_fast {
const char* version() noexcept { return MBPO_FAST_VERSION; }
}  // namespace mbpo_fast
