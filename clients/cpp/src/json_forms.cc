#include "json_forms.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>

namespace vscli {

namespace {

[[noreturn]] void Fail(const std::string& where, const std::string& what) { throw BadInput(where + ": " + what); }

// A place inside a value: `--filter: must[0].range` from `--filter`, `must[0]` and `range`.
std::string At(const std::string& where, const std::string& part) {
  return where + (where.find(": ") == std::string::npos ? ": " : ".") + part;
}

// At most ~100 characters of a value, as the server quotes input.
std::string Quote(const Json& j) {
  std::string s = j.dump(-1, ' ', false, Json::error_handler_t::replace);
  return s.size() > 100 ? s.substr(0, 97) + "..." : s;
}

void OnlyKeys(const Json& j, const std::string& where, const std::set<std::string>& allowed) {
  for (const auto& [key, value] : j.items()) {
    if (allowed.count(key) == 0) {
      std::string names;
      for (const auto& a : allowed) names += (names.empty() ? "" : ", ") + a;
      Fail(where, "unknown key \"" + key + "\" (allowed: " + names + ")");
    }
  }
}

const Json& Object(const Json& j, const std::string& where, const std::string& what) {
  if (!j.is_object()) Fail(where, what + " is a JSON object, not " + Quote(j));
  return j;
}

std::string String(const Json& j, const std::string& where) {
  if (!j.is_string()) Fail(where, "expected a string, not " + Quote(j));
  return j.get<std::string>();
}

bool IsWhole(const Json& j) {
  return j.is_number_integer() &&
         (!j.is_number_unsigned() || j.get<std::uint64_t>() <= std::numeric_limits<std::int64_t>::max());
}

std::int64_t Whole(const Json& j, const std::string& where) {
  if (j.is_number_unsigned() && !IsWhole(j)) Fail(where, Quote(j) + " is beyond the 64-bit integer range");
  if (!j.is_number_integer()) Fail(where, "expected a whole number, not " + Quote(j));
  return j.get<std::int64_t>();
}

double Number(const Json& j, const std::string& where) {
  if (!j.is_number()) Fail(where, "expected a number, not " + Quote(j));
  return j.get<double>();
}

bool AllOf(const Json& list, bool (*test)(const Json&)) {
  for (const auto& x : list) {
    if (!test(x)) return false;
  }
  return true;
}

bool IsString(const Json& j) { return j.is_string(); }

void ToCondition(const Json& j, const std::string& where, vs::Condition* out);

void ToMatch(const std::string& key, const Json& v, const std::string& where, vs::FieldMatch* m) {
  m->set_key(key);
  if (v.is_string()) {
    m->set_keyword(v.get<std::string>());
  } else if (v.is_boolean()) {
    m->set_boolean(v.get<bool>());
  } else if (IsWhole(v)) {
    m->set_integer(v.get<std::int64_t>());
  } else if (v.is_array() && !v.empty() && AllOf(v, IsString)) {
    for (const auto& x : v) m->mutable_any_keywords()->add_values(x.get<std::string>());
  } else if (v.is_array() && !v.empty() && AllOf(v, IsWhole)) {
    for (const auto& x : v) m->mutable_any_integers()->add_values(x.get<std::int64_t>());
  } else {
    Fail(where, "match takes a string, a whole number, a boolean, or a non-empty list of strings or of whole "
                "numbers, not " + Quote(v) + " (for other numbers use a range)");
  }
}

void ToRange(const std::string& key, const Json& v, const std::string& where, vs::FieldRange* r) {
  Object(v, where, "a range");
  OnlyKeys(v, where, {"gt", "gte", "lt", "lte"});
  r->set_key(key);
  if (v.contains("gt")) r->set_gt(Number(v["gt"], At(where, "gt")));
  if (v.contains("gte")) r->set_gte(Number(v["gte"], At(where, "gte")));
  if (v.contains("lt")) r->set_lt(Number(v["lt"], At(where, "lt")));
  if (v.contains("lte")) r->set_lte(Number(v["lte"], At(where, "lte")));
}

void ToCondition(const Json& j, const std::string& where, vs::Condition* out) {
  static const char* kForms =
      "a condition is {\"key\": K, \"match\": V}, {\"key\": K, \"range\": {...}}, {\"exists\": K}, "
      "{\"has_id\": [...]} or {\"filter\": {...}}";
  if (!j.is_object()) Fail(where, std::string(kForms) + ", not " + Quote(j));
  if (j.contains("key")) {
    OnlyKeys(j, where, {"key", "match", "range"});
    const std::string key = String(j["key"], At(where, "key"));
    if (j.size() == 2 && j.contains("match")) {
      return ToMatch(key, j["match"], At(where, "match"), out->mutable_match());
    }
    if (j.size() == 2 && j.contains("range")) {
      return ToRange(key, j["range"], At(where, "range"), out->mutable_range());
    }
    Fail(where, "with \"key\" give exactly one of \"match\" and \"range\"");
  }
  if (j.size() != 1) Fail(where, std::string(kForms) + ", not " + Quote(j));
  const auto& [name, value] = *j.items().begin();
  if (name == "exists") {
    out->set_exists(String(value, At(where, "exists")));
  } else if (name == "has_id") {
    if (!value.is_array() || !AllOf(value, IsString)) Fail(At(where, "has_id"), "expected a list of ids (strings)");
    for (const auto& id : value) out->mutable_has_id()->add_ids(id.get<std::string>());
  } else if (name == "filter") {
    ToFilter(value, At(where, "filter"), out->mutable_filter());
  } else {
    Fail(where, std::string(kForms) + "; unknown key \"" + name + "\"");
  }
}

void ToValue(const Json& v, const std::string& where, vs::PayloadValue* out) {
  if (v.is_boolean()) {
    out->set_boolean(v.get<bool>());
  } else if (v.is_number_integer()) {
    out->set_integer(Whole(v, where));
  } else if (v.is_number_float()) {
    out->set_number(v.get<double>());
  } else if (v.is_array() && AllOf(v, IsString)) {
    auto* texts = out->mutable_texts();  // an empty list too, as the Python client sends it
    for (const auto& x : v) texts->add_values(x.get<std::string>());
  } else if (v.is_array() && AllOf(v, IsWhole)) {
    for (const auto& x : v) out->mutable_integers()->add_values(x.get<std::int64_t>());
  } else if (v.is_array()) {
    Fail(where, "a list holds only strings or only whole numbers, not " + Quote(v));
  } else {
    Fail(where, "a payload value is a string, number, boolean, or a list of strings or of whole numbers, not " +
                    Quote(v));
  }
}

}  // namespace

Json ParseJson(const std::string& text, const std::string& where) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 5: ..."
    std::string why = e.what();
    auto at = why.find("] ");
    throw BadInput(where + ": not valid JSON: " + (at == std::string::npos ? why : why.substr(at + 2)));
  }
}

void ToFilter(const Json& j, const std::string& where, vs::Filter* out) {
  if (!j.is_object()) Fail(where, "a filter is a JSON object of must, should and must_not lists, not " + Quote(j));
  OnlyKeys(j, where, {"must", "should", "must_not"});
  const std::pair<const char*, google::protobuf::RepeatedPtrField<vs::Condition>*> parts[] = {
      {"must", out->mutable_must()}, {"should", out->mutable_should()}, {"must_not", out->mutable_must_not()}};
  for (const auto& [name, conditions] : parts) {
    if (!j.contains(name)) continue;
    const Json& list = j[name];
    const std::string at = At(where, name);
    if (!list.is_array()) Fail(at, "expected a list of conditions, not " + Quote(list));
    for (size_t i = 0; i < list.size(); ++i) {
      ToCondition(list[i], at + "[" + std::to_string(i) + "]", conditions->Add());
    }
  }
}

void ToPayload(const Json& j, const std::string& where, google::protobuf::Map<std::string, std::string>* strings,
               google::protobuf::Map<std::string, vs::PayloadValue>* fields) {
  Object(j, where, "a payload");
  for (const auto& [key, value] : j.items()) {
    if (value.is_string()) {
      (*strings)[key] = value.get<std::string>();
    } else {
      ToValue(value, At(where, key), &(*fields)[key]);
    }
  }
}

Json PayloadJson(const google::protobuf::Map<std::string, std::string>& strings,
                 const google::protobuf::Map<std::string, vs::PayloadValue>& fields) {
  Json out = Json::object();
  for (const auto& [key, value] : strings) out[key] = value;
  for (const auto& [key, v] : fields) {
    switch (v.kind_case()) {
      case vs::PayloadValue::kText: out[key] = v.text(); break;
      case vs::PayloadValue::kInteger: out[key] = v.integer(); break;
      case vs::PayloadValue::kNumber: out[key] = v.number(); break;
      case vs::PayloadValue::kBoolean: out[key] = v.boolean(); break;
      case vs::PayloadValue::kTexts:
        out[key] = Json::array();
        for (const auto& x : v.texts().values()) out[key].push_back(x);
        break;
      case vs::PayloadValue::kIntegers:
        out[key] = Json::array();
        for (const auto x : v.integers().values()) out[key].push_back(x);
        break;
      default: break;
    }
  }
  return out;
}

std::string F32Bytes(const Json& numbers, const std::string& where) {
  if (!numbers.is_array() || numbers.empty()) Fail(where, "a vector is a non-empty list of numbers");
  std::string out(numbers.size() * 4, '\0');
  for (size_t i = 0; i < numbers.size(); ++i) {
    const float f = static_cast<float>(Number(numbers[i], where + "[" + std::to_string(i) + "]"));
    std::uint32_t bits;
    std::memcpy(&bits, &f, 4);
    for (int b = 0; b < 4; ++b) out[i * 4 + b] = static_cast<char>((bits >> (8 * b)) & 0xff);  // little-endian
  }
  return out;
}

std::string ReadFileOrThrow(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BadInput("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void ToItem(const Json& j, const std::string& where, vs::Item* out) {
  Object(j, where, "an item");
  OnlyKeys(j, where, {"id", "vector", "image", "payload"});
  if (!j.contains("id")) Fail(where, "an item needs an \"id\"");
  out->set_id(String(j["id"], At(where, "id")));
  if (j.contains("vector") == j.contains("image")) Fail(where, "give exactly one of \"vector\" and \"image\"");
  if (j.contains("vector")) {
    out->mutable_vector()->set_f32(F32Bytes(j["vector"], At(where, "vector")));
  } else {
    out->set_image(ReadFileOrThrow(String(j["image"], At(where, "image"))));
  }
  if (j.contains("payload")) {
    ToPayload(j["payload"], At(where, "payload"), out->mutable_payload(), out->mutable_fields());
  }
}

void ToSearch(const Json& j, const std::string& where, vs::SearchRequest* out) {
  Object(j, where, "a search");
  OnlyKeys(j, where, {"vector", "id", "words", "sentence", "image", "k", "filter", "score_threshold", "space",
                      "exact", "effort", "with_payload"});
  int queries = 0;
  for (const char* q : {"vector", "id", "words", "sentence", "image"}) queries += j.contains(q) ? 1 : 0;
  if (queries != 1) Fail(where, "give exactly one of \"vector\", \"id\", \"words\", \"sentence\" and \"image\"");
  if (j.contains("vector")) out->mutable_vector()->set_f32(F32Bytes(j["vector"], At(where, "vector")));
  if (j.contains("id")) out->set_id(String(j["id"], At(where, "id")));
  if (j.contains("sentence")) out->mutable_text()->set_sentence(String(j["sentence"], At(where, "sentence")));
  if (j.contains("image")) out->set_image(ReadFileOrThrow(String(j["image"], At(where, "image"))));
  if (j.contains("words")) {
    const Json& words = j["words"];
    if (!words.is_array() || !AllOf(words, IsString)) Fail(At(where, "words"), "expected a list of words (strings)");
    for (const auto& w : words) out->mutable_text()->mutable_words()->add_words(w.get<std::string>());
  }
  const std::int64_t k = j.contains("k") ? Whole(j["k"], At(where, "k")) : 10;
  if (k < 1 || k > std::numeric_limits<std::int32_t>::max()) Fail(At(where, "k"), "k is at least 1");
  out->set_k(static_cast<std::int32_t>(k));
  if (j.contains("filter")) ToFilter(j["filter"], At(where, "filter"), out->mutable_filter());
  if (j.contains("score_threshold")) {
    out->set_score_threshold(static_cast<float>(Number(j["score_threshold"], At(where, "score_threshold"))));
  }
  if (j.contains("space")) {
    const std::string space = String(j["space"], At(where, "space"));
    if (space == "image") {
      out->set_space(vs::SPACE_IMAGE);
    } else if (space == "joint") {
      out->set_space(vs::SPACE_JOINT);
    } else {
      Fail(At(where, "space"), "\"image\" or \"joint\", not " + Quote(j["space"]));
    }
  }
  if (j.contains("exact")) {
    if (!j["exact"].is_boolean()) Fail(At(where, "exact"), "expected true or false");
    out->set_exact(j["exact"].get<bool>());
  }
  if (j.contains("effort")) {
    const std::int64_t effort = Whole(j["effort"], At(where, "effort"));
    if (effort < 0 || effort > std::numeric_limits<std::int32_t>::max()) Fail(At(where, "effort"), "out of range");
    out->set_effort(static_cast<std::int32_t>(effort));
  }
  bool with_payload = true;
  if (j.contains("with_payload")) {
    if (!j["with_payload"].is_boolean()) Fail(At(where, "with_payload"), "expected true or false");
    with_payload = j["with_payload"].get<bool>();
  }
  out->set_with_payload(with_payload);
}

}  // namespace vscli
