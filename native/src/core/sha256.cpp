#include "core/sha256.h"

#include <openssl/evp.h>

#include "core/error.h"

namespace kiln {

namespace {

std::string to_hex(const unsigned char* digest, unsigned length) {
  static const char* digits = "0123456789abcdef";
  std::string out(length * 2, '0');
  for (unsigned i = 0; i < length; ++i) {
    out[2 * i] = digits[digest[i] >> 4];
    out[2 * i + 1] = digits[digest[i] & 0xf];
  }
  return out;
}

}  // namespace

struct Sha256Stream::State {
  EVP_MD_CTX* ctx = nullptr;
};

Sha256Stream::Sha256Stream() : state_(std::make_unique<State>()) {
  state_->ctx = EVP_MD_CTX_new();
  if (!state_->ctx || EVP_DigestInit_ex(state_->ctx, EVP_sha256(), nullptr) != 1) {
    throw Error("sha256: OpenSSL digest initialisation failed");
  }
}

Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(state_->ctx); }

void Sha256Stream::update(const void* data, size_t size) {
  if (size && EVP_DigestUpdate(state_->ctx, data, size) != 1) throw Error("sha256: update failed");
}

std::string Sha256Stream::hex_digest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned length = 0;
  if (EVP_DigestFinal_ex(state_->ctx, digest, &length) != 1) throw Error("sha256: final failed");
  return to_hex(digest, length);
}

std::string sha256_hex(const void* data, size_t size) {
  Sha256Stream stream;
  stream.update(data, size);
  return stream.hex_digest();
}

}  // namespace kiln
