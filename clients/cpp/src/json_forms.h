// The JSON forms visionsearch-cli reads and prints (README.md, "JSON forms"), mapped to and from the proto:
// filters, typed payloads, items to upsert and searches of a batch. Parsing is by nlohmann::json; a value that
// does not fit throws BadInput with the place it was found (e.g. `--filter: must[1].range: ...`).
#pragma once

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

#include "visionsearch/v1/visionsearch.pb.h"

namespace vscli {

namespace vs = visionsearch::v1;
using Json = nlohmann::json;

// Input the CLI cannot send: bad JSON, or JSON that does not map to the proto. Exit status 2.
class BadInput : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses `text` as JSON; BadInput naming `where` and the parser's message when it is not.
Json ParseJson(const std::string& text, const std::string& where);

// {"must": [...], "should": [...], "must_not": [...]}, each condition one of
//   {"key": K, "match": V}  V a string, whole number or bool; a list of strings or whole numbers: any of them
//   {"key": K, "range": {"gt": X, "gte": X, "lt": X, "lte": X}}  (any of the four)
//   {"exists": K}   {"has_id": [ids]}   {"filter": {...}} (a nested filter)
void ToFilter(const Json& j, const std::string& where, vs::Filter* out);

// A JSON object as an item's two payload maps: strings go to `strings`; whole numbers (no fraction or
// exponent in the text) to `fields` as integer, other numbers as number (double), booleans as boolean, lists
// of strings as texts, lists of whole numbers as integers.
void ToPayload(const Json& j, const std::string& where, google::protobuf::Map<std::string, std::string>* strings,
               google::protobuf::Map<std::string, vs::PayloadValue>* fields);

// The two maps as one JSON object, keys sorted; doubles keep a fraction (30.0), integers do not.
Json PayloadJson(const google::protobuf::Map<std::string, std::string>& strings,
                 const google::protobuf::Map<std::string, vs::PayloadValue>& fields);

// {"id": ID, "vector": [numbers] | "image": "FILE", "payload": {...}}: one line of an upsert file.
void ToItem(const Json& j, const std::string& where, vs::Item* out);

// One line of a batch file: exactly one of {"vector": [numbers]}, {"id": ID}, {"words": [...]},
// {"sentence": "..."}, {"image": "FILE"}; optionally "k" (default 10), "filter", "score_threshold", "space"
// ("image" or "joint"), "exact", "effort", "with_payload" (default true).
void ToSearch(const Json& j, const std::string& where, vs::SearchRequest* out);

// Numbers as packed little-endian float32 (Vector.f32).
std::string F32Bytes(const Json& numbers, const std::string& where);

// Reads a whole file; BadInput naming it when it cannot.
std::string ReadFileOrThrow(const std::string& path);

}  // namespace vscli
