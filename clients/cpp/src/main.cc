// visionsearch-cli: search a collection by words, or tag an image file, over gRPC.
//
//   visionsearch-cli [--address HOST:PORT] [--timeout SECONDS] search COLLECTION WORD... [-k N]
//   visionsearch-cli [--address HOST:PORT] [--timeout SECONDS] tag IMAGE_FILE [-k N] [--vocabulary w1,w2,...]
//
// The address defaults to $VISIONSEARCH_ADDRESS, else 127.0.0.1:50051. Output is one tab-separated line per
// hit: `id  score  label` for search, `word  score` for tag. A call the server refuses prints
// `error: STATUS_NAME (code): message` on stderr and exits with 1; bad usage exits with 2.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "visionsearch/v1/visionsearch.grpc.pb.h"

namespace vs = visionsearch::v1;

namespace {

const char* StatusName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNRECOGNISED";
  }
}

int Refused(const grpc::Status& status) {
  std::cerr << "error: " << StatusName(status.error_code()) << " (" << static_cast<int>(status.error_code())
            << "): " << status.error_message() << "\n";
  return 1;
}

int Usage(const std::string& problem) {
  if (!problem.empty()) std::cerr << "visionsearch-cli: " << problem << "\n";
  std::cerr << "usage: visionsearch-cli [--address HOST:PORT] [--timeout SECONDS] search COLLECTION WORD... [-k N]\n"
               "       visionsearch-cli [--address HOST:PORT] [--timeout SECONDS] tag IMAGE_FILE [-k N]"
               " [--vocabulary w1,w2,...]\n";
  return 2;
}

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string part; std::getline(in, part, ',');) {
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

struct Options {
  std::string address;
  double timeout_seconds = 60;
  int k = 10;
  std::string vocabulary;
  std::vector<std::string> positional;  // command and its arguments
};

void SetDeadline(grpc::ClientContext* ctx, double seconds) {
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<long long>(seconds * 1000)));
}

int Search(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  if (opt.positional.size() < 3) return Usage("search needs a collection and at least one word");
  vs::SearchRequest req;
  req.set_collection(opt.positional[1]);
  for (size_t i = 2; i < opt.positional.size(); ++i) req.mutable_text()->mutable_words()->add_words(opt.positional[i]);
  req.set_k(opt.k);
  req.set_with_payload(true);

  auto stub = vs::SearchService::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, opt.timeout_seconds);
  vs::SearchResponse res;
  grpc::Status status = stub->Search(&ctx, req, &res);
  if (!status.ok()) return Refused(status);
  for (const auto& note : res.notes()) std::cerr << "note: " << note << "\n";
  for (const auto& hit : res.hits()) {
    auto label = hit.payload().find("label");
    std::printf("%s\t%.4f\t%s\n", hit.id().c_str(), hit.score(),
                label == hit.payload().end() ? "" : label->second.c_str());
  }
  return 0;
}

int Tag(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  if (opt.positional.size() != 2) return Usage("tag needs one image file");
  vs::TagRequest req;
  if (!ReadFile(opt.positional[1], req.mutable_image())) {
    std::cerr << "visionsearch-cli: cannot read " << opt.positional[1] << "\n";
    return 2;
  }
  req.set_k(opt.k);
  for (const auto& word : SplitCommas(opt.vocabulary)) req.add_vocabulary(word);

  auto stub = vs::TagService::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, opt.timeout_seconds);
  vs::TagResponse res;
  grpc::Status status = stub->Tag(&ctx, req, &res);
  if (!status.ok()) return Refused(status);
  for (const auto& tag : res.tags()) std::printf("%s\t%.4f\n", tag.word().c_str(), tag.score());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const char* env_address = std::getenv("VISIONSEARCH_ADDRESS");
  opt.address = env_address != nullptr && *env_address != '\0' ? env_address : "127.0.0.1:50051";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      Usage("");
      return 0;
    }
    if (arg != "--address" && arg != "--timeout" && arg != "-k" && arg != "--vocabulary") {
      opt.positional.push_back(arg);
      continue;
    }
    if (i + 1 >= argc) return Usage(arg + " needs a value");
    const std::string value = argv[++i];
    try {
      if (arg == "--address") opt.address = value;
      if (arg == "--timeout") opt.timeout_seconds = std::stod(value);
      if (arg == "-k") opt.k = std::stoi(value);
      if (arg == "--vocabulary") opt.vocabulary = value;
    } catch (const std::exception&) {
      return Usage("bad value for " + arg + ": " + value);
    }
  }
  if (opt.positional.empty()) return Usage("no command");

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  args.SetMaxSendMessageSize(64 * 1024 * 1024);
  auto channel = grpc::CreateCustomChannel(opt.address, grpc::InsecureChannelCredentials(), args);

  const std::string& command = opt.positional[0];
  if (command == "search") return Search(channel, opt);
  if (command == "tag") return Tag(channel, opt);
  return Usage("unknown command " + command);
}
