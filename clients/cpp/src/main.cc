// visionsearch-cli: search a collection (by words, an id or a vector, with a filter), run a batch of searches,
// recommend, scroll, count, create, update, fill and change collections, tag an image file, show what a server
// offers, over gRPC, in plaintext or TLS (mTLS with a client certificate), with an API key or without.
//
//   visionsearch-cli [OPTIONS] COMMAND ...      (`visionsearch-cli --help` lists the commands; README.md too)
//   OPTIONS: --address HOST:PORT --timeout SECONDS --tls --ca FILE --cert FILE --key FILE --api-key KEY
//
// The address defaults to $VISIONSEARCH_ADDRESS, else 127.0.0.1:50051; the key to $VISIONSEARCH_API_KEY; the
// CA file to $VISIONSEARCH_CA. --ca, --cert and --key (PEM files) turn TLS on, as does --tls (the server's
// certificate is then checked against gRPC's default roots); --cert and --key go together (mTLS). The key is
// sent with every call as `authorization: Bearer <key>`. Filters, payloads, items and batch searches are JSON
// (json_forms.h). Output is tab-separated lines (README.md, "Output"). A call the server refuses prints
// `error: STATUS_NAME (code): message` on stderr and exits with 1; bad usage, JSON that does not fit and
// unreadable files exit with 2.
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "json_forms.h"
#include "visionsearch/v1/visionsearch.grpc.pb.h"

namespace vs = visionsearch::v1;
using vscli::BadInput;
using vscli::Json;

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


const char kUsage[] =
    "usage: visionsearch-cli [OPTIONS] COMMAND ...\n"
    "  search COLLECTION [WORD...] [--id ID | --vector X,Y,...] [-k N] [--filter JSON] [--score-threshold S]\n"
    "         [--space image|joint] [--exact] [--show-payload]\n"
    "  batch COLLECTION FILE [--show-payload]            searches, one JSON object per line (- for stdin)\n"
    "  recommend COLLECTION --positive ID,... [--negative ID,...] [-k N] [--filter JSON] [--score-threshold S]\n"
    "         [--space image|joint] [--show-payload]\n"
    "  scroll COLLECTION [--filter JSON] [--limit N]     every item (that passes), N per call (100)\n"
    "  count COLLECTION [--filter JSON]\n"
    "  upsert COLLECTION FILE                            items, one JSON object per line (- for stdin)\n"
    "  set-payload COLLECTION ID... --payload JSON       set these keys, keep the others\n"
    "  delete-payload-keys COLLECTION ID... --keys K,...\n"
    "  delete COLLECTION ID... | delete COLLECTION --filter JSON\n"
    "  create COLLECTION (--dim N | --embedder NAME [--joint NAME]) [--metric cosine|inner_product]\n"
    "         [--index auto|exact|lsh|hnsw] [--recall-target R] [--payload-index KEY=TYPE,...]\n"
    "  update COLLECTION [--index KIND] [--recall-target R] [--payload-index KEY=TYPE,...]   only what is given\n"
    "  tag IMAGE_FILE [-k N] [--vocabulary w1,w2,...]\n"
    "  info | collections | drop COLLECTION\n"
    "options: --address HOST:PORT (env VISIONSEARCH_ADDRESS)  --timeout SECONDS (60)\n"
    "         --tls  --ca FILE (env VISIONSEARCH_CA)  --cert FILE --key FILE (mTLS)\n"
    "         --api-key KEY (better: env VISIONSEARCH_API_KEY, which other users cannot see)\n"
    "TYPE: keyword, integer, float or bool. JSON forms of filters, payloads, items and searches: README.md\n";

int Usage(const std::string& problem) {
  if (!problem.empty()) std::cerr << "visionsearch-cli: " << problem << "\n";
  std::cerr << kUsage;
  return 2;
}

// Bad usage found inside a command: a message and the usage text, exit status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

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

// Flags that take a value, and flags that stand alone, besides the connection's.
const std::set<std::string> kValueFlags = {
    "-k", "--vocabulary", "--filter", "--score-threshold", "--space", "--id", "--vector", "--limit", "--payload",
    "--keys", "--dim", "--metric", "--embedder", "--joint", "--index", "--recall-target", "--payload-index",
    "--positive", "--negative"};
const std::set<std::string> kSwitches = {"--show-payload", "--exact"};

struct Options {
  std::string address;
  double timeout_seconds = 60;
  bool tls = false;
  std::string ca_file, cert_file, key_file;
  std::string api_key;
  std::vector<std::string> positional;       // command and its arguments
  std::map<std::string, std::string> flags;  // the command's flags ("" for a switch)

  bool Has(const std::string& flag) const { return flags.count(flag) != 0; }
  std::string Get(const std::string& flag, const std::string& fallback = "") const {
    auto it = flags.find(flag);
    return it == flags.end() ? fallback : it->second;
  }
  long long Int(const std::string& flag, long long fallback) const {
    if (!Has(flag)) return fallback;
    const std::string& v = flags.at(flag);
    size_t used = 0;
    long long n = 0;
    try {
      n = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != v.size()) throw UsageError("bad value for " + flag + ": " + v + " (a whole number)");
    return n;
  }
  double Float(const std::string& flag) const {
    const std::string& v = flags.at(flag);
    size_t used = 0;
    double x = 0;
    try {
      x = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != v.size()) throw UsageError("bad value for " + flag + ": " + v + " (a number)");
    return x;
  }
  // Refuses flags the command does not take, and a wrong count of positional arguments.
  void Takes(const std::set<std::string>& allowed, size_t min_args, size_t max_args, const std::string& shape) const {
    for (const auto& [flag, value] : flags) {
      if (allowed.count(flag) == 0) throw UsageError(positional[0] + " does not take " + flag);
    }
    const size_t args = positional.size() - 1;
    if (args < min_args || args > max_args) throw UsageError(positional[0] + " takes " + shape);
  }
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

// One call of a generated stub's method; false (after printing the refusal) when the server refused it.
template <typename Stub, typename Request, typename Response>
bool Call(Stub* stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
          const Request& req, Response* res, const Options& opt, int* exit_code) {
  auto ctx = NewContext(opt);
  grpc::Status status = (stub->*method)(ctx.get(), req, res);
  if (status.ok()) return true;
  *exit_code = Refused(status, opt);
  return false;
}

void MaybeFilter(const Options& opt, vs::Filter* out) {
  if (opt.Has("--filter")) vscli::ToFilter(vscli::ParseJson(opt.Get("--filter"), "--filter"), "--filter", out);
}

vs::Space SpaceFlag(const Options& opt) {
  const std::string space = opt.Get("--space");
  if (space.empty()) return vs::SPACE_UNSPECIFIED;
  if (space == "image") return vs::SPACE_IMAGE;
  if (space == "joint") return vs::SPACE_JOINT;
  throw UsageError("--space is image or joint, not " + space);
}

std::string Compact(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// `id  score  label`, and the payload as JSON with --show-payload; in a batch, the search's number first.
void PrintHits(const vs::SearchResponse& res, const Options& opt, int search = -1) {
  const std::string prefix = search < 0 ? "" : std::to_string(search) + "\t";
  for (const auto& note : res.notes()) {
    std::cerr << "note: " << (search < 0 ? "" : "[" + std::to_string(search) + "] ") << note << "\n";
  }
  for (const auto& hit : res.hits()) {
    auto label = hit.payload().find("label");
    std::printf("%s%s\t%.4f\t%s", prefix.c_str(), hit.id().c_str(), hit.score(),
                label == hit.payload().end() ? "" : label->second.c_str());
    if (opt.Has("--show-payload")) {
      std::printf("\t%s", Compact(vscli::PayloadJson(hit.payload(), hit.fields())).c_str());
    }
    std::printf("\n");
  }
}

int Search(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"-k", "--filter", "--score-threshold", "--space", "--id", "--vector", "--exact", "--show-payload"}, 1,
            SIZE_MAX, "a collection and WORD..., --id ID or --vector X,Y,...");
  vs::SearchRequest req;
  req.set_collection(opt.positional[1]);
  const int queries = (opt.positional.size() > 2 ? 1 : 0) + (opt.Has("--id") ? 1 : 0) + (opt.Has("--vector") ? 1 : 0);
  if (queries != 1) throw UsageError("search takes one query: words, --id ID or --vector X,Y,...");
  for (size_t i = 2; i < opt.positional.size(); ++i) req.mutable_text()->mutable_words()->add_words(opt.positional[i]);
  if (opt.Has("--id")) req.set_id(opt.Get("--id"));
  if (opt.Has("--vector")) {
    Json numbers = Json::array();
    for (const auto& x : SplitCommas(opt.Get("--vector"))) numbers.push_back(vscli::ParseJson(x, "--vector"));
    req.mutable_vector()->set_f32(vscli::F32Bytes(numbers, "--vector"));
  }
  req.set_k(static_cast<int>(opt.Int("-k", 10)));
  req.set_with_payload(true);
  req.set_space(SpaceFlag(opt));
  req.set_exact(opt.Has("--exact"));
  if (opt.Has("--score-threshold")) req.set_score_threshold(static_cast<float>(opt.Float("--score-threshold")));
  MaybeFilter(opt, req.mutable_filter());
  if (!opt.Has("--filter")) req.clear_filter();

  auto stub = vs::SearchService::NewStub(channel);
  vs::SearchResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::SearchService::Stub::Search, req, &res, opt, &code)) return code;
  PrintHits(res, opt);
  return 0;
}

// Calls `each` with every non-blank line of FILE (or stdin for -) parsed as JSON, and its place for messages.
void ForEachJsonLine(const std::string& path, const std::function<void(const Json&, const std::string&)>& each) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path);
    if (!file) throw BadInput("cannot read " + path);
    in = &file;
  }
  std::string line;
  for (int number = 1; std::getline(*in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = (path == "-" ? "stdin" : path) + ":" + std::to_string(number);
    each(vscli::ParseJson(line, where), where);
  }
}

int Batch(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--show-payload"}, 2, 2, "a collection and a file of searches (- for stdin)");
  vs::SearchBatchRequest req;
  req.set_collection(opt.positional[1]);
  ForEachJsonLine(opt.positional[2], [&](const Json& j, const std::string& where) {
    vscli::ToSearch(j, where, req.add_searches());
  });
  if (req.searches_size() == 0) throw BadInput(opt.positional[2] + ": no searches in it");
  auto stub = vs::SearchService::NewStub(channel);
  vs::SearchBatchResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::SearchService::Stub::SearchBatch, req, &res, opt, &code)) return code;
  for (int i = 0; i < res.results_size(); ++i) PrintHits(res.results(i), opt, i);
  return 0;
}

int Recommend(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"-k", "--filter", "--score-threshold", "--space", "--positive", "--negative", "--show-payload"}, 1, 1,
            "a collection (and --positive ID,...)");
  vs::RecommendRequest req;
  req.set_collection(opt.positional[1]);
  for (const auto& id : SplitCommas(opt.Get("--positive"))) req.add_positive_ids(id);
  for (const auto& id : SplitCommas(opt.Get("--negative"))) req.add_negative_ids(id);
  req.set_k(static_cast<int>(opt.Int("-k", 10)));
  req.set_with_payload(true);
  req.set_space(SpaceFlag(opt));
  if (opt.Has("--score-threshold")) req.set_score_threshold(static_cast<float>(opt.Float("--score-threshold")));
  MaybeFilter(opt, req.mutable_filter());
  if (!opt.Has("--filter")) req.clear_filter();
  auto stub = vs::SearchService::NewStub(channel);
  vs::SearchResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::SearchService::Stub::Recommend, req, &res, opt, &code)) return code;
  PrintHits(res, opt);
  return 0;
}

// Every item in id order: `id  payload-as-JSON`, following the server's cursors to the last page.
int Scroll(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--filter", "--limit"}, 1, 1, "a collection");
  vs::ScrollRequest req;
  req.set_collection(opt.positional[1]);
  req.set_limit(static_cast<int>(opt.Int("--limit", 100)));
  MaybeFilter(opt, req.mutable_filter());
  if (!opt.Has("--filter")) req.clear_filter();
  auto stub = vs::CollectionService::NewStub(channel);
  do {
    vs::ScrollResponse res;
    int code = 0;
    if (!Call(stub.get(), &vs::CollectionService::Stub::Scroll, req, &res, opt, &code)) return code;
    for (const auto& item : res.items()) {
      std::printf("%s\t%s\n", item.id().c_str(), Compact(vscli::PayloadJson(item.payload(), item.fields())).c_str());
    }
    req.set_cursor(res.next_cursor());
  } while (!req.cursor().empty());
  return 0;
}

int Count(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--filter"}, 1, 1, "a collection");
  vs::CountRequest req;
  req.set_collection(opt.positional[1]);
  MaybeFilter(opt, req.mutable_filter());
  if (!opt.Has("--filter")) req.clear_filter();
  auto stub = vs::CollectionService::NewStub(channel);
  vs::CountResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::Count, req, &res, opt, &code)) return code;
  std::printf("%lld\n", static_cast<long long>(res.count()));
  return 0;
}

// Items from a JSON Lines file, sent in requests of at most 1,000 items or about 8 MB.
int Upsert(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({}, 2, 2, "a collection and a file of items (- for stdin)");
  auto stub = vs::CollectionService::NewStub(channel);
  vs::UpsertRequest req;
  req.set_collection(opt.positional[1]);
  size_t bytes = 0;
  long long upserted = 0, count = 0;
  int code = 0;
  auto flush = [&]() {
    if (req.items_size() == 0) return true;
    vs::UpsertResponse res;
    if (!Call(stub.get(), &vs::CollectionService::Stub::Upsert, req, &res, opt, &code)) return false;
    upserted += res.upserted();
    count = res.count();
    req.clear_items();
    bytes = 0;
    return true;
  };
  bool ok = true;
  ForEachJsonLine(opt.positional[2], [&](const Json& j, const std::string& where) {
    if (!ok) return;
    vs::Item* item = req.add_items();
    vscli::ToItem(j, where, item);
    bytes += item->ByteSizeLong();
    if (req.items_size() >= 1000 || bytes >= 8 * 1024 * 1024) ok = flush();
  });
  if (!ok || !flush()) {
    if (upserted > 0) std::fprintf(stderr, "upserted %lld items before the refusal\n", upserted);
    return code;
  }
  std::printf("upserted %lld; count %lld\n", upserted, count);
  return 0;
}

int SetPayload(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--payload"}, 2, SIZE_MAX, "a collection and at least one id (and --payload JSON)");
  if (!opt.Has("--payload")) throw UsageError("set-payload needs --payload JSON");
  vs::SetPayloadRequest req;
  req.set_collection(opt.positional[1]);
  for (size_t i = 2; i < opt.positional.size(); ++i) req.add_ids(opt.positional[i]);
  vscli::ToPayload(vscli::ParseJson(opt.Get("--payload"), "--payload"), "--payload", req.mutable_payload(),
                   req.mutable_fields());
  auto stub = vs::CollectionService::NewStub(channel);
  vs::SetPayloadResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::SetPayload, req, &res, opt, &code)) return code;
  std::printf("updated %d\n", res.updated());
  return 0;
}

int DeletePayloadKeys(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--keys"}, 2, SIZE_MAX, "a collection and at least one id (and --keys K,...)");
  vs::DeletePayloadKeysRequest req;
  req.set_collection(opt.positional[1]);
  for (size_t i = 2; i < opt.positional.size(); ++i) req.add_ids(opt.positional[i]);
  for (const auto& key : SplitCommas(opt.Get("--keys"))) req.add_keys(key);
  if (req.keys_size() == 0) throw UsageError("delete-payload-keys needs --keys K,...");
  auto stub = vs::CollectionService::NewStub(channel);
  vs::DeletePayloadKeysResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::DeletePayloadKeys, req, &res, opt, &code)) return code;
  std::printf("updated %d\n", res.updated());
  return 0;
}

int Delete(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--filter"}, 1, SIZE_MAX, "a collection and ids, or --filter JSON");
  if (opt.Has("--filter") == (opt.positional.size() > 2)) throw UsageError("delete takes ids or --filter, not both");
  vs::DeleteRequest req;
  req.set_collection(opt.positional[1]);
  for (size_t i = 2; i < opt.positional.size(); ++i) req.add_ids(opt.positional[i]);
  MaybeFilter(opt, req.mutable_filter());
  if (!opt.Has("--filter")) req.clear_filter();
  auto stub = vs::CollectionService::NewStub(channel);
  vs::DeleteResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::Delete, req, &res, opt, &code)) return code;
  std::printf("deleted %d\n", res.deleted());
  return 0;
}

// --payload-index category=keyword,price=float
void PayloadIndexes(const Options& opt, google::protobuf::RepeatedPtrField<vs::PayloadIndex>* out) {
  static const std::map<std::string, vs::PayloadType> kTypes = {{"keyword", vs::PAYLOAD_TYPE_KEYWORD},
                                                                {"integer", vs::PAYLOAD_TYPE_INTEGER},
                                                                {"float", vs::PAYLOAD_TYPE_FLOAT},
                                                                {"bool", vs::PAYLOAD_TYPE_BOOL}};
  for (const auto& pair : SplitCommas(opt.Get("--payload-index"))) {
    const auto eq = pair.find('=');
    const auto type = eq == std::string::npos ? kTypes.end() : kTypes.find(pair.substr(eq + 1));
    if (type == kTypes.end()) {
      throw UsageError("--payload-index takes KEY=TYPE pairs, TYPE keyword, integer, float or bool, not " + pair);
    }
    auto* index = out->Add();
    index->set_key(pair.substr(0, eq));
    index->set_type(type->second);
  }
}

vs::IndexType IndexFlag(const Options& opt) {
  static const std::map<std::string, vs::IndexType> kIndexes = {
      {"auto", vs::INDEX_AUTO}, {"exact", vs::INDEX_EXACT}, {"lsh", vs::INDEX_LSH}, {"hnsw", vs::INDEX_HNSW}};
  auto it = kIndexes.find(opt.Get("--index", "auto"));
  if (it == kIndexes.end()) throw UsageError("--index is auto, exact, lsh or hnsw, not " + opt.Get("--index"));
  return it->second;
}

void PrintCollection(const vs::CollectionInfo& c) {
  static const std::map<int, std::string> kTypeNames = {{vs::PAYLOAD_TYPE_KEYWORD, "keyword"},
                                                        {vs::PAYLOAD_TYPE_INTEGER, "integer"},
                                                        {vs::PAYLOAD_TYPE_FLOAT, "float"},
                                                        {vs::PAYLOAD_TYPE_BOOL, "bool"}};
  std::string indexes;
  for (const auto& p : c.config().payload_indexes()) {
    auto name = kTypeNames.find(p.type());
    indexes += (indexes.empty() ? "" : ",") + p.key() + "=" + (name == kTypeNames.end() ? "?" : name->second);
  }
  std::printf("%s\t%lld\t%d\t%s\t%s\n", c.config().name().c_str(), static_cast<long long>(c.count()),
              c.config().dim(), c.index_in_use().c_str(), indexes.c_str());
}

int Create(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--dim", "--metric", "--embedder", "--joint", "--index", "--recall-target", "--payload-index"}, 1, 1,
            "a collection");
  vs::CreateCollectionRequest req;
  auto* config = req.mutable_config();
  config->set_name(opt.positional[1]);
  config->set_dim(static_cast<int>(opt.Int("--dim", 0)));
  const std::string metric = opt.Get("--metric", "cosine");
  if (metric != "cosine" && metric != "inner_product") {
    throw UsageError("--metric is cosine or inner_product, not " + metric);
  }
  config->set_metric(metric == "cosine" ? vs::METRIC_COSINE : vs::METRIC_INNER_PRODUCT);
  config->set_embedder(opt.Get("--embedder"));
  config->set_joint(opt.Get("--joint"));
  config->set_index(IndexFlag(opt));
  if (opt.Has("--recall-target")) config->set_recall_target(static_cast<float>(opt.Float("--recall-target")));
  PayloadIndexes(opt, config->mutable_payload_indexes());
  auto stub = vs::CollectionService::NewStub(channel);
  vs::CollectionInfo res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::CreateCollection, req, &res, opt, &code)) return code;
  PrintCollection(res);
  return 0;
}

// UpdateCollection with a field mask naming exactly the settings given.
int Update(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"--index", "--recall-target", "--payload-index"}, 1, 1, "a collection");
  vs::UpdateCollectionRequest req;
  req.set_name(opt.positional[1]);
  auto* config = req.mutable_config();
  auto* mask = req.mutable_update_mask();
  if (opt.Has("--index")) {
    config->set_index(IndexFlag(opt));
    mask->add_paths("index");
  }
  if (opt.Has("--recall-target")) {
    config->set_recall_target(static_cast<float>(opt.Float("--recall-target")));
    mask->add_paths("recall_target");
  }
  if (opt.Has("--payload-index")) {
    PayloadIndexes(opt, config->mutable_payload_indexes());
    mask->add_paths("payload_indexes");
  }
  if (mask->paths_size() == 0) throw UsageError("update needs --index, --recall-target or --payload-index");
  auto stub = vs::CollectionService::NewStub(channel);
  vs::CollectionInfo res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::UpdateCollection, req, &res, opt, &code)) return code;
  PrintCollection(res);
  return 0;
}

int Tag(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({"-k", "--vocabulary"}, 1, 1, "one image file");
  vs::TagRequest req;
  if (!ReadFile(opt.positional[1], req.mutable_image())) throw BadInput("cannot read " + opt.positional[1]);
  req.set_k(static_cast<int>(opt.Int("-k", 10)));
  for (const auto& word : SplitCommas(opt.Get("--vocabulary"))) req.add_vocabulary(word);
  auto stub = vs::TagService::NewStub(channel);
  vs::TagResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::TagService::Stub::Tag, req, &res, opt, &code)) return code;
  for (const auto& tag : res.tags()) std::printf("%s\t%.4f\n", tag.word().c_str(), tag.score());
  return 0;
}

int Info(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({}, 0, 0, "no arguments");
  auto stub = vs::ServerService::NewStub(channel);
  vs::GetServerInfoResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::ServerService::Stub::GetServerInfo, vs::GetServerInfoRequest(), &res, opt, &code)) {
    return code;
  }
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
  opt.Takes({}, 0, 0, "no arguments");
  auto stub = vs::CollectionService::NewStub(channel);
  vs::ListCollectionsResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::ListCollections, vs::ListCollectionsRequest(), &res, opt,
            &code)) {
    return code;
  }
  for (const auto& c : res.collections()) PrintCollection(c);
  return 0;
}

int Drop(const std::shared_ptr<grpc::Channel>& channel, const Options& opt) {
  opt.Takes({}, 1, 1, "one collection");
  vs::DropCollectionRequest req;
  req.set_name(opt.positional[1]);
  auto stub = vs::CollectionService::NewStub(channel);
  vs::DropCollectionResponse res;
  int code = 0;
  if (!Call(stub.get(), &vs::CollectionService::Stub::DropCollection, req, &res, opt, &code)) return code;
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
  const std::set<std::string> connection = {"--address", "--timeout", "--ca", "--cert", "--key", "--api-key"};
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
    if (kSwitches.count(arg) != 0) {
      opt.flags[arg] = "";
      continue;
    }
    if (connection.count(arg) == 0 && kValueFlags.count(arg) == 0) {
      if (arg.size() > 2 && arg.compare(0, 2, "--") == 0) return Usage("unknown option " + arg);
      opt.positional.push_back(arg);
      continue;
    }
    if (i + 1 >= argc) return Usage(arg + " needs a value");
    const std::string value = argv[++i];
    if (kValueFlags.count(arg) != 0) {
      if (opt.flags.count(arg) != 0) return Usage(arg + " given twice");
      opt.flags[arg] = value;
      continue;
    }
    try {
      if (arg == "--address") opt.address = value;
      if (arg == "--timeout") opt.timeout_seconds = std::stod(value);
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

  using Command = int (*)(const std::shared_ptr<grpc::Channel>&, const Options&);
  const std::map<std::string, Command> commands = {
      {"search", Search},   {"batch", Batch},       {"recommend", Recommend},
      {"scroll", Scroll},   {"count", Count},       {"upsert", Upsert},
      {"set-payload", SetPayload}, {"delete-payload-keys", DeletePayloadKeys}, {"delete", Delete},
      {"create", Create},   {"update", Update},     {"tag", Tag},
      {"info", Info},       {"collections", Collections}, {"drop", Drop}};
  auto command = commands.find(opt.positional[0]);
  if (command == commands.end()) return Usage("unknown command " + opt.positional[0]);
  try {
    return command->second(channel, opt);
  } catch (const UsageError& e) {
    return Usage(e.what());
  } catch (const BadInput& e) {
    std::cerr << "visionsearch-cli: " << e.what() << "\n";
    return 2;
  }
}
