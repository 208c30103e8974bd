#pragma once

#include <cstddef>
#include <memory>
#include <string>

namespace kiln {

// SHA-256 via OpenSSL's libcrypto (Debian libssl-dev), which uses the CPU's SHA extensions where
// present; engines are gigabytes, so hashing speed is load time.
std::string sha256_hex(const void* data, size_t size);

class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;

  void update(const void* data, size_t size);
  std::string hex_digest();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace kiln
