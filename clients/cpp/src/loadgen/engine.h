// The load engine: sends a Plan's requests through gRPC's async API (one CompletionQueue, bytes in and bytes
// out through the generic stub, responses never parsed) and records one Record per request.
//
// Open loop: request i is scheduled at t0 + i/rate ("uniform") or at seeded exponential gaps ("poisson"). The
// sending thread sleeps until each scheduled time (clock_nanosleep on CLOCK_MONOTONIC, timer slack 1 ns) and
// starts the call without waiting for any reply; a second thread takes completions off the queue. Latency is
// measured from the *scheduled* time, so a stalled server (or the max_in_flight cap) shows up in latency
// instead of silently lowering the offered rate, and the generator's own lateness is recorded as lag.
//
// Closed loop: `concurrency` callers, each starting its next call when the last one completes; latency runs
// from the actual start and lag is 0.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "plan.h"

namespace loadgen {

struct Options {
  bool closed = false;
  double rate = 100.0;  // open loop: requests/s
  bool poisson = false;
  uint64_t seed = 0;
  int64_t warmup_ns = 0;  // requests scheduled (open) or started (closed) before this are sent, not recorded
  int64_t duration_ns = 0;
  uint64_t max_requests = 0;  // 0: no limit besides the duration
  int64_t max_in_flight = 1000;
  int64_t concurrency = 8;
  int64_t timeout_ns = 10'000'000'000;
  std::string api_key;  // sent as `authorization: Bearer <key>` on every call when set
};

// One recorded request, written as-is to the records file (little-endian, 32 bytes).
struct Record {
  int64_t scheduled_ns;  // after the measured window started
  int64_t latency_ns;    // completion minus scheduled (open) or actual start (closed)
  int64_t lag_ns;        // actual start minus scheduled, >= 0 (always 0 in a closed loop)
  uint8_t kind;          // copied from the plan's step
  uint8_t status;        // grpc::StatusCode
  uint8_t pad[6];
};
static_assert(sizeof(Record) == 32, "the records file layout is 32 bytes per request");

struct Result {
  std::vector<Record> records;
  uint64_t sent = 0;  // every request started, warm-up included
  // The generator's own cost over the load (first send to last completion), all threads of this process.
  double wall_s = 0, user_s = 0, sys_s = 0;
  long max_rss_kb = 0;
};

Result Run(const std::shared_ptr<grpc::Channel>& channel, const Plan& plan, const Options& options);

}  // namespace loadgen
