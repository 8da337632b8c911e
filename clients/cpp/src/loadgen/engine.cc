#include "engine.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include <grpcpp/generic/generic_stub.h>

namespace loadgen {
namespace {

int64_t Now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

void SleepUntil(int64_t t) {
  timespec ts{static_cast<time_t>(t / 1'000'000'000), static_cast<long>(t % 1'000'000'000)};
  while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
  }
}

double Seconds(const timeval& tv) { return double(tv.tv_sec) + double(tv.tv_usec) * 1e-6; }

// Offsets (ns after t0) of the open-loop schedule: i/rate, or cumulative exponential gaps of mean 1/rate drawn
// from a seeded mt19937_64 (the same distribution as the Python engine's Poisson arrivals, not the same draw).
class Schedule {
 public:
  Schedule(double rate, bool poisson, uint64_t seed) : rate_(rate), poisson_(poisson), rng_(seed), gap_(rate) {}

  int64_t Next() {
    if (!poisson_) return std::llround(double(i_++) * 1e9 / rate_);
    const int64_t out = std::llround(t_ * 1e9);
    t_ += gap_(rng_);
    return out;
  }

 private:
  double rate_;
  bool poisson_;
  uint64_t i_ = 0;
  double t_ = 0;
  std::mt19937_64 rng_;
  std::exponential_distribution<double> gap_;
};

class Engine {
 public:
  Engine(const std::shared_ptr<grpc::Channel>& channel, const Plan& plan, const Options& options)
      : plan_(plan), options_(options), stub_(channel) {
    payloads_.reserve(plan.payloads.size());
    for (const auto& p : plan.payloads) {
      grpc::Slice slice(p.data(), p.size());
      payloads_.emplace_back(&slice, 1);  // each call copies a reference to these slices, not the bytes
    }
  }

  Result Run() {
    // Sleeps wake at the timer, not up to 50 us later (the default slack for normal threads).
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    if (options_.closed) {
      records_.reserve(1 << 16);
    } else {
      // Poisson arrivals may exceed rate x duration a little: 1% and 64 spare keep the vector from growing.
      double expected = std::ceil(options_.rate * double(options_.duration_ns) * 1e-9 * 1.01) + 64;
      if (options_.max_requests) expected = std::min(expected, double(options_.max_requests));
      records_.reserve(static_cast<size_t>(std::min(expected, 4e6)));
    }
    rusage before{};
    getrusage(RUSAGE_SELF, &before);
    t0_ = Now() + 1'000'000;  // 1 ms to start the completion thread before the first scheduled send
    window_start_ = t0_ + options_.warmup_ns;
    window_end_ = window_start_ + options_.duration_ns;
    std::thread completions([this] { CompletionLoop(); });
    if (options_.closed) {
      SleepUntil(t0_);
      for (int64_t c = 0; c < options_.concurrency; ++c) {
        if (!StartClosed()) break;
      }
    } else {
      DriveOpen();
    }
    WaitWhile([this] { return in_flight_.load() > 0; });
    const int64_t end = Now();
    cq_.Shutdown();
    completions.join();
    rusage after{};
    getrusage(RUSAGE_SELF, &after);

    Result r;
    r.records = std::move(records_);
    r.sent = sent_.load();
    r.wall_s = double(end - t0_) * 1e-9;
    r.user_s = Seconds(after.ru_utime) - Seconds(before.ru_utime);
    r.sys_s = Seconds(after.ru_stime) - Seconds(before.ru_stime);
    r.max_rss_kb = after.ru_maxrss;
    return r;
  }

 private:
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer response;
    grpc::Status status;
    std::unique_ptr<grpc::ClientAsyncResponseReader<grpc::ByteBuffer>> reader;
    int64_t scheduled;
    int64_t sent;
    uint8_t kind;
    bool measured;
  };

  void DriveOpen() {
    Schedule schedule(options_.rate, options_.poisson, options_.seed);
    uint64_t recorded = 0;
    for (uint64_t i = 0;; ++i) {
      const int64_t offset = schedule.Next();
      const int64_t scheduled = t0_ + offset;
      if (scheduled >= window_end_) break;
      const bool measured = offset >= options_.warmup_ns;
      if (measured) {
        if (options_.max_requests && recorded >= options_.max_requests) break;
        ++recorded;
      }
      if (scheduled > Now()) SleepUntil(scheduled);
      // Only waits when max_in_flight binds; the wait then counts as lag and in the latency.
      WaitWhile([this] { return in_flight_.load() >= options_.max_in_flight; });
      Start(i, scheduled, measured);
    }
  }

  // Closed loop: one caller's next call, unless the window is over or max_requests are recorded.
  bool StartClosed() {
    const int64_t start = Now();
    if (start >= window_end_) return false;
    const bool measured = start >= window_start_;
    if (measured && options_.max_requests && recorded_starts_.fetch_add(1) >= options_.max_requests) {
      return false;
    }
    Start(next_index_.fetch_add(1), start, measured);
    return true;
  }

  void Start(uint64_t i, int64_t scheduled, bool measured) {
    const Step& step = plan_.steps[i % plan_.steps.size()];
    auto* call = new Call;
    call->scheduled = scheduled;
    call->kind = step.kind;
    call->measured = measured;
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::nanoseconds(options_.timeout_ns));
    if (!options_.api_key.empty()) call->context.AddMetadata("authorization", "Bearer " + options_.api_key);
    in_flight_.fetch_add(1);
    sent_.fetch_add(1, std::memory_order_relaxed);
    call->sent = Now();
    call->reader = stub_.PrepareUnaryCall(&call->context, plan_.methods[step.method], payloads_[step.payload], &cq_);
    call->reader->StartCall();
    call->reader->Finish(&call->response, &call->status, call);
  }

  void CompletionLoop() {
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
      auto* call = static_cast<Call*>(tag);
      const int64_t done = Now();
      if (call->measured) {
        Record r{};
        r.scheduled_ns = call->scheduled - window_start_;
        r.latency_ns = done - call->scheduled;
        // A closed loop has no schedule: its calls start when they can, so it has no lag to report.
        r.lag_ns = options_.closed ? 0 : std::max<int64_t>(call->sent - call->scheduled, 0);
        r.kind = call->kind;
        r.status = static_cast<uint8_t>(call->status.error_code());
        records_.push_back(r);
      }
      delete call;
      if (options_.closed) StartClosed();  // before the decrement, so in_flight only reaches 0 at the end
      in_flight_.fetch_sub(1);
      if (waiting_.load()) {
        std::lock_guard<std::mutex> lock(mu_);
        changed_.notify_all();
      }
    }
  }

  // Blocks the calling (sending) thread while busy() holds; the completion thread wakes it. waiting_ is set
  // before busy() is checked under the lock, and the completion thread reads it after changing in_flight_,
  // so (all seq_cst) at least one of them sees the other's write and no wake-up is lost.
  template <class Busy>
  void WaitWhile(Busy busy) {
    if (!busy()) return;
    std::unique_lock<std::mutex> lock(mu_);
    waiting_.store(true);
    changed_.wait(lock, [&] { return !busy(); });
    waiting_.store(false);
  }

  const Plan& plan_;
  const Options options_;
  grpc::GenericStub stub_;
  grpc::CompletionQueue cq_;
  std::vector<grpc::ByteBuffer> payloads_;
  std::vector<Record> records_;  // written by the completion thread only
  int64_t t0_ = 0, window_start_ = 0, window_end_ = 0;
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> next_index_{0};
  std::atomic<uint64_t> recorded_starts_{0};
  std::atomic<bool> waiting_{false};
  std::mutex mu_;
  std::condition_variable changed_;
};

}  // namespace

Result Run(const std::shared_ptr<grpc::Channel>& channel, const Plan& plan, const Options& options) {
  return Engine(channel, plan, options).Run();
}

}  // namespace loadgen
