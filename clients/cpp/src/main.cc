// visionsearch-cli: search a collection by words, tag an image file, show what a server offers, list or drop
// collections, over gRPC, in plaintext or TLS (mTLS with a client certificate), with an API key or without.
//
//   visionsearch-cli [OPTIONS] search COLLECTION WORD... [-k N]
//   visionsearch-cli [OPTIONS] tag IMAGE_FILE [-k N] [--vocabulary w1,w2,...]
//   visionsearch-cli [OPTIONS] info | collections | drop COLLECTION
//   OPTIONS: --address HOST:PORT --timeout SECONDS --tls --ca FILE --cert FILE --key FILE --api-key KEY
//
// The address defaults to $VISIONSEARCH_ADDRESS, else 127.0.0.1:50051; the key to $VISIONSEARCH_API_KEY; the
// CA file to $VISIONSEARCH_CA. --ca, --cert and --key (PEM files) turn TLS on, as does --tls (the server's
// certificate is then checked against gRPC's default roots); --cert and --key go together (mTLS). The key is
// sent with every call as `authorization: Bearer <key>`. Output is one tab-separated line per hit: `id  score
// label` for search, `word  score` for tag, `name  count  dim  index` for collections; info prints the
// server's GetServerInfoResponse as JSON. A call the server refuses prints `error: STATUS_NAME (code):
// message` on stderr and exits with 1; bad usage (and unreadable certificate files) exits with 2.
#include <google/protobuf/util/json_util.h>
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

int Usage(const std::string& problem) {
  if (!problem.empty()) std::cerr << "visionsearch-cli: " << problem << "\n";
  std::cerr << "usage: visionsearch-cli [OPTIONS] search COLLECTION WORD... [-k N]\n"
               "       visionsearch-cli [OPTIONS] tag IMAGE_FILE [-k N] [--vocabulary w1,w2,...]\n"
               "       visionsearch-cli [OPTIONS] info | collections | drop COLLECTION\n"
               "options: --address HOST:PORT (env VISIONSEARCH_ADDRESS)  --timeout SECONDS (60)\n"
               "         --tls  --ca FILE (env VISIONSEARCH_CA)  --cert FILE --key FILE (mTLS)\n"
               "         --api-key KEY (better: env VISIONSEARCH_API_KEY, which other users cannot see)\n";
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
  bool tls = false;
  std::string ca_file, cert_file, key_file;
  std::string api_key;
  std::vector<std::string> positional;  // command and its arguments
};

bool UsesTls(const Options& opt) {
  return opt.tls || !opt.ca_file.empty() || !opt.cert_file.empty() || !opt.key_file.empty();
}

// A refused call: its status on stderr, exit status 1. A connection that failed under TLS gets a hint, since
// gRPC's own message ("failed to connect", "Socket closed") seldom names the certificate at fault.
int Refused(const grpc::Status& status, const Options& opt) {
  std::cerr << "error: " << StatusName(status.error_code()) << " (" << static_cast<int>(status.error_code())
            << "): " << status.error_message() << "\n";
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    if (UsesTls(opt)) {
      std::cerr << "hint: if the TLS handshake failed, check that the server's certificate is valid for "
                << opt.address << " and signed by the CA in --ca, and, if the server requires client "
                   "certificates, pass --cert and --key signed by its CA\n";
    } else {
      std::cerr << "hint: if the server speaks TLS, pass --ca FILE (or --tls)\n";
    }
  }
  return 1;
}

// A context for one call: its deadline, and the API key when there is one.
std::unique_ptr<grpc::ClientContext> NewContext(const Options& opt) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<long long>(opt.timeout_seconds * 1000)));
  if (!opt.api_key.empty()) ctx->AddMetadata("authorization", "Bearer " + opt.api_key);
  return ctx;
}

int Search(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  if (opt.positional.size() < 3) return Usage("search needs a collection and at least one word");
  vs::SearchRequest req;
  req.set_collection(opt.positional[1]);
  for (size_t i = 2; i < opt.positional.size(); ++i) req.mutable_text()->mutable_words()->add_words(opt.positional[i]);
  req.set_k(opt.k);
  req.set_with_payload(true);

  auto stub = vs::SearchService::NewStub(channel);
  auto ctx = NewContext(opt);
  vs::SearchResponse res;
  grpc::Status status = stub->Search(ctx.get(), req, &res);
  if (!status.ok()) return Refused(status, opt);
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
  auto ctx = NewContext(opt);
  vs::TagResponse res;
  grpc::Status status = stub->Tag(ctx.get(), req, &res);
  if (!status.ok()) return Refused(status, opt);
  for (const auto& tag : res.tags()) std::printf("%s\t%.4f\n", tag.word().c_str(), tag.score());
  return 0;
}

int Info(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  if (opt.positional.size() != 1) return Usage("info takes no arguments");
  auto stub = vs::ServerService::NewStub(channel);
  auto ctx = NewContext(opt);
  vs::GetServerInfoResponse res;
  grpc::Status status = stub->GetServerInfo(ctx.get(), vs::GetServerInfoRequest(), &res);
  if (!status.ok()) return Refused(status, opt);
  google::protobuf::util::JsonPrintOptions json;
  json.add_whitespace = true;
  json.always_print_primitive_fields = true;  // `"tls": false` rather than nothing
  json.preserve_proto_field_names = true;     // the proto's names: max_k, api_keys_required
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(res, &out, json).ok()) {
    std::cerr << "visionsearch-cli: the server's answer does not convert to JSON\n";
    return 1;
  }
  std::printf("%s", out.c_str());
  return 0;
}

int Collections(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  if (opt.positional.size() != 1) return Usage("collections takes no arguments");
  auto stub = vs::CollectionService::NewStub(channel);
  auto ctx = NewContext(opt);
  vs::ListCollectionsResponse res;
  grpc::Status status = stub->ListCollections(ctx.get(), vs::ListCollectionsRequest(), &res);
  if (!status.ok()) return Refused(status, opt);
  for (const auto& c : res.collections()) {
    std::printf("%s\t%lld\t%d\t%s\n", c.config().name().c_str(), static_cast<long long>(c.count()),
                c.config().dim(), c.index_in_use().c_str());
  }
  return 0;
}

int Drop(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  if (opt.positional.size() != 2) return Usage("drop needs one collection");
  vs::DropCollectionRequest req;
  req.set_name(opt.positional[1]);
  auto stub = vs::CollectionService::NewStub(channel);
  auto ctx = NewContext(opt);
  vs::DropCollectionResponse res;
  grpc::Status status = stub->DropCollection(ctx.get(), req, &res);
  if (!status.ok()) return Refused(status, opt);
  std::printf("dropped %s\n", req.name().c_str());
  return 0;
}

// The channel's credentials: plaintext, or TLS with the given roots (gRPC's default roots without --ca) and,
// for mTLS, this client's certificate. Empty with a message in *problem when a file does not do.
std::shared_ptr<grpc::ChannelCredentials> Credentials(const Options& opt, std::string* problem) {
  if (!UsesTls(opt)) return grpc::InsecureChannelCredentials();
  if (opt.cert_file.empty() != opt.key_file.empty()) {
    *problem = "--cert and --key (a client certificate for mTLS) go together";
    return nullptr;
  }
  grpc::SslCredentialsOptions ssl;
  const std::pair<const std::string*, std::string*> files[] = {{&opt.ca_file, &ssl.pem_root_certs},
                                                                {&opt.cert_file, &ssl.pem_cert_chain},
                                                                {&opt.key_file, &ssl.pem_private_key}};
  for (const auto& [path, pem] : files) {
    if (path->empty()) continue;
    if (!ReadFile(*path, pem)) {
      *problem = "cannot read " + *path;
      return nullptr;
    }
    if (pem->find("-----BEGIN ") == std::string::npos) {
      *problem = *path + " is not a PEM file (-----BEGIN ...)";
      return nullptr;
    }
  }
  return grpc::SslCredentials(ssl);
}

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

// A key travels in a header: printable ASCII without spaces, as `visionsearch-admin keys add` prints it.
bool HeaderSafe(const std::string& key) {
  for (unsigned char c : key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return !key.empty();
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  opt.address = Env("VISIONSEARCH_ADDRESS");
  if (opt.address.empty()) opt.address = "127.0.0.1:50051";
  opt.api_key = Env("VISIONSEARCH_API_KEY");
  opt.ca_file = Env("VISIONSEARCH_CA");
  bool key_flag = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      Usage("");
      return 0;
    }
    if (arg == "--tls") {
      opt.tls = true;
      continue;
    }
    if (arg != "--address" && arg != "--timeout" && arg != "-k" && arg != "--vocabulary" && arg != "--ca" &&
        arg != "--cert" && arg != "--key" && arg != "--api-key") {
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
      if (arg == "--ca") opt.ca_file = value;
      if (arg == "--cert") opt.cert_file = value;
      if (arg == "--key") opt.key_file = value;
      if (arg == "--api-key") {
        opt.api_key = value;
        key_flag = true;
      }
    } catch (const std::exception&) {
      return Usage("bad value for " + arg + ": " + value);
    }
  }
  if (opt.positional.empty()) return Usage("no command");
  // An empty VISIONSEARCH_API_KEY means no key; an empty --api-key is a mistake.
  if ((key_flag || !opt.api_key.empty()) && !HeaderSafe(opt.api_key)) {
    return Usage("the API key is empty or has spaces or characters a header cannot carry: pass it as printed");
  }

  std::string problem;
  auto credentials = Credentials(opt, &problem);
  if (!credentials) return Usage(problem);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  args.SetMaxSendMessageSize(64 * 1024 * 1024);
  auto channel = grpc::CreateCustomChannel(opt.address, credentials, args);

  const std::string& command = opt.positional[0];
  if (command == "search") return Search(channel, opt);
  if (command == "tag") return Tag(channel, opt);
  if (command == "info") return Info(channel, opt);
  if (command == "collections") return Collections(channel, opt);
  if (command == "drop") return Drop(channel, opt);
  return Usage("unknown command " + command);
}
