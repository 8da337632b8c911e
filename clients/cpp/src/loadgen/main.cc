// visionsearch-loadgen: the native engine of `visionsearch-loadtest --engine native`.
//
// The Python harness checks the server, prepares the requests and writes them to a plan file (plan.h); this
// program replays the plan at a constant rate (open loop) or with N callers (closed loop), writes one record
// per measured request to a records file, and prints one JSON line on stdout with what the run cost the
// generator itself (CPU seconds of this process per second of wall time, from getrusage). The harness turns
// the records into the same report, histogram and charts as its own engine.
//
//   visionsearch-loadgen --address HOST:PORT --plan PLAN --records OUT [--mode open|closed] [--rate R]
//       [--arrival uniform|poisson] [--seed N] [--duration S] [--warmup S] [--requests N]
//       [--max-in-flight N] [--concurrency N] [--timeout S] [--connect-timeout S] [--max-message-bytes N]
//       [--tls] [--ca PEM]
//
// TLS: --tls with the system's roots, or --ca with a PEM file of roots. An API key comes from the environment
// (VISIONSEARCH_API_KEY), never the command line, and is sent as `authorization: Bearer <key>`.
//
// Exit codes: 0 done, 2 bad usage or plan file, 3 the server could not be reached, 1 anything else.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>

#include "engine.h"
#include "plan.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the records file is written in host order, which must be little-endian"
#endif

namespace {

constexpr const char* kUsage =
    "usage: visionsearch-loadgen --address HOST:PORT --plan PLAN --records OUT [--mode open|closed]\n"
    "         [--rate R] [--arrival uniform|poisson] [--seed N] [--duration S] [--warmup S] [--requests N]\n"
    "         [--max-in-flight N] [--concurrency N] [--timeout S] [--connect-timeout S]\n"
    "         [--max-message-bytes N] [--tls] [--ca PEM]   (API key: VISIONSEARCH_API_KEY)\n"
    "Plans are written by `visionsearch-loadtest --engine native`; see clients/cpp/README.md.\n";

int Usage(const std::string& problem) {
  std::fprintf(stderr, "visionsearch-loadgen: %s\n%s", problem.c_str(), kUsage);
  return 2;
}

bool ParseDouble(const std::string& s, double* out) {
  char* end = nullptr;
  errno = 0;
  *out = std::strtod(s.c_str(), &end);
  return !s.empty() && *end == '\0' && errno == 0 && std::isfinite(*out);
}

bool ParseCount(const std::string& s, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  if (s.empty() || s[0] == '-') return false;
  *out = std::strtoull(s.c_str(), &end, 10);
  return *end == '\0' && errno == 0;
}

int64_t Nanos(double seconds) { return static_cast<int64_t>(std::llround(seconds * 1e9)); }

bool WriteRecords(const std::string& path, const loadgen::Result& result, std::string* error) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    *error = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  const uint64_t n = result.records.size();
  bool ok = std::fwrite("VSLGREC1", 1, 8, f) == 8 && std::fwrite(&n, sizeof n, 1, f) == 1 &&
            (n == 0 || std::fwrite(result.records.data(), sizeof(loadgen::Record), n, f) == n);
  ok = std::fclose(f) == 0 && ok;
  if (!ok) *error = "cannot write " + path + ": " + std::strerror(errno);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::string address, plan_path, records_path, mode = "open", arrival = "uniform", ca_path;
  bool tls = false;
  double rate = 100, duration = 10, warmup = 1, timeout = 10, connect_timeout = 5;
  uint64_t seed = 0, requests = 0, max_in_flight = 1000, concurrency = 8, max_message = 16 << 20;

  using Setter = std::function<bool(const std::string&)>;
  auto text = [](std::string* out) -> Setter { return [out](const std::string& v) { *out = v; return true; }; };
  auto real = [](double* out) -> Setter { return [out](const std::string& v) { return ParseDouble(v, out); }; };
  auto count = [](uint64_t* out) -> Setter { return [out](const std::string& v) { return ParseCount(v, out); }; };
  const std::map<std::string, Setter> flags = {
      {"--address", text(&address)},         {"--plan", text(&plan_path)},
      {"--records", text(&records_path)},    {"--mode", text(&mode)},
      {"--arrival", text(&arrival)},         {"--rate", real(&rate)},
      {"--duration", real(&duration)},       {"--warmup", real(&warmup)},
      {"--timeout", real(&timeout)},         {"--connect-timeout", real(&connect_timeout)},
      {"--seed", count(&seed)},              {"--requests", count(&requests)},
      {"--max-in-flight", count(&max_in_flight)}, {"--concurrency", count(&concurrency)},
      {"--max-message-bytes", count(&max_message)}, {"--ca", text(&ca_path)},
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--tls") {
      tls = true;
      continue;
    }
    const auto flag = flags.find(arg);
    if (flag == flags.end()) return Usage("unknown argument " + arg);
    if (i + 1 >= argc) return Usage(arg + " needs a value");
    if (!flag->second(argv[++i])) return Usage(std::string("bad value for ") + arg + ": " + argv[i]);
  }
  if (address.empty() || plan_path.empty() || records_path.empty()) {
    return Usage("--address, --plan and --records are required");
  }
  if (mode != "open" && mode != "closed") return Usage("--mode must be open or closed, not " + mode);
  if (arrival != "uniform" && arrival != "poisson") {
    return Usage("--arrival must be uniform or poisson, not " + arrival);
  }
  if (!(rate > 0) || !(duration > 0) || warmup < 0 || !(timeout > 0) || !(connect_timeout > 0)) {
    return Usage("rate, duration and timeouts must be > 0 and warm-up >= 0");
  }
  if (max_in_flight < 1 || concurrency < 1 || max_message < 1 || max_message > INT32_MAX) {
    return Usage("--max-in-flight and --concurrency must be >= 1, --max-message-bytes within 1..2^31-1");
  }

  loadgen::Plan plan;
  std::string error;
  if (!loadgen::ReadPlan(plan_path, &plan, &error)) {
    std::fprintf(stderr, "visionsearch-loadgen: %s\n", error.c_str());
    return 2;
  }

  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(max_message));
  args.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (tls || !ca_path.empty()) {
    grpc::SslCredentialsOptions ssl;
    if (!ca_path.empty()) {
      std::ifstream in(ca_path, std::ios::binary);
      std::ostringstream pem;
      pem << in.rdbuf();
      if (!in || pem.str().empty()) return Usage("cannot read the CA file " + ca_path);
      ssl.pem_root_certs = pem.str();
    }
    credentials = grpc::SslCredentials(ssl);
  }
  auto channel = grpc::CreateCustomChannel(address, credentials, args);
  const auto deadline = std::chrono::system_clock::now() + std::chrono::nanoseconds(Nanos(connect_timeout));
  if (!channel->WaitForConnected(deadline)) {
    std::fprintf(stderr, "cannot reach visionsearch at %s: no connection within %g s\n", address.c_str(),
                 connect_timeout);
    return 3;
  }

  loadgen::Options options;
  options.closed = mode == "closed";
  options.rate = rate;
  options.poisson = arrival == "poisson";
  options.seed = seed;
  options.warmup_ns = Nanos(warmup);
  options.duration_ns = Nanos(duration);
  options.max_requests = requests;
  options.max_in_flight = static_cast<int64_t>(max_in_flight);
  options.concurrency = static_cast<int64_t>(concurrency);
  options.timeout_ns = Nanos(timeout);
  // From the environment, not the command line, where every user of the machine could read it.
  if (const char* key = std::getenv("VISIONSEARCH_API_KEY")) options.api_key = key;
  const loadgen::Result result = loadgen::Run(channel, plan, options);

  if (!WriteRecords(records_path, result, &error)) {
    std::fprintf(stderr, "visionsearch-loadgen: %s\n", error.c_str());
    return 1;
  }
  const double cpu = result.user_s + result.sys_s;
  const double cores = result.wall_s > 0 ? cpu / result.wall_s : 0;
  std::printf(
      "{\"engine\": \"native\", \"sent\": %llu, \"recorded\": %zu, \"wall_s\": %.6f, \"user_s\": %.6f, "
      "\"sys_s\": %.6f, \"cpu_s\": %.6f, \"cores\": %.6f, \"max_rss_kb\": %ld}\n",
      static_cast<unsigned long long>(result.sent), result.records.size(), result.wall_s, result.user_s,
      result.sys_s, cpu, cores, result.max_rss_kb);
  std::fprintf(stderr,
               "visionsearch-loadgen: %llu requests sent (%zu recorded) in %.2f s; generator CPU %.3f s "
               "= %.3f cores (%.1f us per request)\n",
               static_cast<unsigned long long>(result.sent), result.records.size(), result.wall_s, cpu, cores,
               result.sent ? cpu / double(result.sent) * 1e6 : 0.0);
  return 0;
}
