// The request plan a run replays: written by the Python harness (visionsearch_client.loadtest.native) after it
// has checked the server and gathered and serialized the inputs, so both engines send the same bytes in the
// same order. Little-endian, all lengths uint32:
//
//   "VSLGPLAN" version=1
//   n_methods  { len, bytes }              RPC paths, e.g. /visionsearch.v1.SearchService/Search
//   n_payloads { len, bytes }              serialized request messages, each distinct one once
//   n_steps    { kind:u8, method:u32, payload:u32 }   request i sends step i % n_steps
//
// kind is the index into the harness's KINDS (search_vector, search_image, search_word, tag, embed); the engine
// only copies it into each record.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loadgen {

struct Step {
  uint8_t kind;
  uint32_t method;
  uint32_t payload;
};

struct Plan {
  std::vector<std::string> methods;
  std::vector<std::string> payloads;
  std::vector<Step> steps;
};

// Reads and checks a plan file; on failure returns false and says why in *error.
bool ReadPlan(const std::string& path, Plan* plan, std::string* error);

}  // namespace loadgen
