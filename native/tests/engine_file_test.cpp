// The engine file reader refuses every kind of damage with an error that names it, and never crashes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "backend/cpu/target.h"
#include "build_helpers.h"
#include "core/error.h"
#include "core/sha256.h"
#include "core/thread_pool.h"
#include "engine/engine.h"
#include "engine/format.h"
#include "engine/reader.h"
#include "engine/writer.h"

namespace kiln::test {
namespace {

std::vector<uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_all(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                              static_cast<std::streamsize>(bytes.size()));
}

std::string error_of(const std::string& path) {
  try {
    Engine::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class EngineFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = write_tiny_checkpoint("m", TinySpec{});
    path_ = build_engine(dir_, Precision::BF16);
    bytes_ = read_all(path_);
  }
  std::string variant(const std::vector<uint8_t>& bytes) {
    const std::string p = dir_ + "/variant.kiln";
    write_all(p, bytes);
    return p;
  }
  std::string dir_, path_;
  std::vector<uint8_t> bytes_;
};

TEST_F(EngineFile, RoundTripsHeaderAndSections) {
  auto e = Engine::load(path_);
  EXPECT_EQ(e->header()["precision"], "bf16");
  EXPECT_EQ(e->header()["target"]["fingerprint"], cpu_target_fingerprint());
  const TensorView& qkv = e->tensor("layers.0.qkv.weight");
  EXPECT_EQ(qkv.dtype, DType::BF16);
  EXPECT_EQ(qkv.shape, (std::vector<int64_t>{64 + 2 * 32, 64}));
  for (const auto& s : e->header()["sections"]) EXPECT_EQ(s["offset"].get<uint64_t>() % kSectionAlignment, 0u);
  EXPECT_NE(e->find("tokenizer.json"), nullptr);
  EXPECT_TRUE(e->header()["chat_template"].is_string());
}

TEST_F(EngineFile, RefusesWrongMagic) {
  auto b = bytes_;
  b[0] = 'X';
  EXPECT_NE(error_of(variant(b)).find("bad magic"), std::string::npos);
}

TEST_F(EngineFile, RefusesAnotherFormatVersionNamingBoth) {
  auto b = bytes_;
  b[8] = 2;
  const std::string err = error_of(variant(b));
  EXPECT_NE(err.find("format version 2"), std::string::npos) << err;
  EXPECT_NE(err.find("reads version 1"), std::string::npos) << err;
}

TEST_F(EngineFile, RefusesACorruptedHeader) {
  auto b = bytes_;
  b[kEnginePreambleSize + 20] ^= 0x01;
  EXPECT_NE(error_of(variant(b)).find("header checksum mismatch"), std::string::npos);
}

TEST_F(EngineFile, RefusesACorruptedSectionNamingIt) {
  const auto ef = read_engine_file(path_);
  const SectionEntry& s = ef.sections.at(3);
  auto b = bytes_;
  b[s.offset + s.bytes / 2] ^= 0x40;
  const std::string err = error_of(variant(b));
  EXPECT_NE(err.find("section " + s.name + " sha256 mismatch"), std::string::npos) << err;
}

TEST_F(EngineFile, TruncationAtAnyLengthIsAnErrorNotACrash) {
  for (size_t len = 0; len < bytes_.size(); len += std::max<size_t>(1, bytes_.size() / 97)) {
    const std::string p = variant(std::vector<uint8_t>(bytes_.begin(), bytes_.begin() + static_cast<long>(len)));
    EXPECT_THROW(Engine::load(p), Error) << "length " << len;
  }
  // The last section ends exactly at end of file (no padding after it), so dropping one byte must fail.
  EXPECT_THROW(Engine::load(variant(std::vector<uint8_t>(bytes_.begin(), bytes_.end() - 1))), Error);
}

TEST_F(EngineFile, RandomByteFlipsAreAlwaysDetected) {
  for (size_t i = 0; i < bytes_.size(); i += std::max<size_t>(1, bytes_.size() / 211)) {
    auto b = bytes_;
    b[i] ^= 0x5a;
    EXPECT_THROW(Engine::load(variant(b)), Error) << "byte " << i;
  }
}

TEST_F(EngineFile, RefusesAnEngineBuiltForAnotherTargetButInspectStillReadsIt) {
  const auto ef = read_engine_file(path_);
  Json header = ef.header;
  header.erase("sections");
  header["target"]["fingerprint"] = "cuda:sm_90:H100";
  std::vector<TensorBlob> blobs;
  for (const auto& s : ef.sections) {
    blobs.push_back(TensorBlob{s.name, s.dtype, s.shape, s.layout,
                               std::vector<uint8_t>(ef.file->data() + s.offset, ef.file->data() + s.offset + s.bytes)});
  }
  const std::string other = dir_ + "/other.kiln";
  write_engine(other, header, blobs);
  const std::string err = error_of(other);
  EXPECT_NE(err.find("built for target \"cuda:sm_90:H100\""), std::string::npos) << err;
  EXPECT_NE(inspect(other).find("cuda:sm_90:H100"), std::string::npos);
}

TEST_F(EngineFile, InspectVerifiesChecksums) {
  EXPECT_NE(inspect(path_).find("\"autotune\""), std::string::npos);
  auto b = bytes_;
  b[b.size() - 1] ^= 0xff;
  EXPECT_THROW(inspect(variant(b)), Error);
}

// SectionCheck::Bounds (a caller that verified the whole file's sha256) leaves the sections' bytes
// unhashed, and still refuses what it does check: a corrupted header, a truncated file.
TEST_F(EngineFile, ABoundsOnlyReadSkipsTheSectionDigestsButNotTheHeader) {
  const auto ef = read_engine_file(path_);
  const SectionEntry& s = ef.sections.at(3);
  auto b = bytes_;
  b[s.offset + s.bytes / 2] ^= 0x40;
  const std::string flipped = variant(b);
  EXPECT_THROW(read_engine_file(flipped), Error);
  EXPECT_EQ(read_engine_file(flipped, nullptr, SectionCheck::Bounds).sections.size(), ef.sections.size());
  EXPECT_NE(Engine::load(flipped, nullptr, SectionCheck::Bounds)->find(s.name), nullptr);
  EXPECT_THROW(inspect(flipped), Error);
  EXPECT_NE(inspect(flipped, SectionCheck::Bounds).find("\"sections\""), std::string::npos);

  auto h = bytes_;
  h[kEnginePreambleSize + 20] ^= 0x01;
  EXPECT_THROW(read_engine_file(variant(h), nullptr, SectionCheck::Bounds), Error);
  const std::string cut = variant(std::vector<uint8_t>(bytes_.begin(), bytes_.end() - 1));
  EXPECT_THROW(read_engine_file(cut, nullptr, SectionCheck::Bounds), Error);
}

// The builder writes with its thread pool: section hashes on the pool, the file digest beside the
// write. Same file, same digest (the file's sha256) as a writer with no pool; a cancel from
// on_section still leaves no file and joins the digest thread.
TEST_F(EngineFile, AWriteWithAPoolIsTheSameFile) {
  const auto ef = read_engine_file(path_);
  Json header = ef.header;
  header.erase("sections");
  std::vector<TensorBlob> blobs;
  for (const auto& s : ef.sections) {
    blobs.push_back(TensorBlob{s.name, s.dtype, s.shape, s.layout,
                               std::vector<uint8_t>(ef.file->data() + s.offset, ef.file->data() + s.offset + s.bytes)});
  }
  const std::string alone = dir_ + "/alone.kiln", pooled = dir_ + "/pooled.kiln";
  std::vector<size_t> progress;
  const WrittenEngine a = write_engine(alone, header, blobs);
  ThreadPool pool(4);
  const WrittenEngine b = write_engine(pooled, header, blobs, [&](size_t done, size_t) { progress.push_back(done); },
                                       &pool);
  const std::vector<uint8_t> bytes = read_all(pooled);
  EXPECT_EQ(bytes, read_all(alone));
  EXPECT_EQ(b.sha256, a.sha256);
  EXPECT_EQ(b.sha256, sha256_hex(bytes.data(), bytes.size()));
  EXPECT_EQ(b.bytes, bytes.size());
  ASSERT_EQ(progress.size(), blobs.size());
  EXPECT_EQ(progress.back(), blobs.size());
  EXPECT_NO_THROW(Engine::load(pooled));

  const std::string cancelled = dir_ + "/cancelled.kiln";
  EXPECT_THROW(write_engine(cancelled, header, blobs, [](size_t done, size_t) { if (done == 2) throw Error("stop"); },
                            &pool),
               Error);
  EXPECT_FALSE(std::filesystem::exists(cancelled));
  EXPECT_FALSE(std::filesystem::exists(cancelled + ".tmp"));
}

TEST_F(EngineFile, MissingFileAndDirectoryGiveErrors) {
  EXPECT_THROW(Engine::load(dir_ + "/absent.kiln"), Error);
  EXPECT_THROW(Engine::load(dir_), Error);
}

}  // namespace
}  // namespace kiln::test
