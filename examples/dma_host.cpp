// dma_host: loads libtern at run time, as backup software loads a storage
// plugin, checks the disk pool's capacity, writes four images from four
// threads over one client, reads them back and checks every byte, then
// starts a fifth job and cancels it from another thread, as a DMA's "cancel
// job" does.
// usage: dma_host SERVER CONTAINER PATH/TO/libtern.so
#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "tern.h"

namespace {

const tern_plugin_api *api = nullptr;

bool check(tern_status st, const char *what) {
  if (st == TERN_OK) return true;
  std::fprintf(stderr, "%s: %s: %s\n", what, api->status_name(st), api->last_error());
  return false;
}

std::vector<uint8_t> stream_data(int stream, size_t len) {
  std::vector<uint8_t> out(len);
  uint64_t x = 0x9e3779b97f4a7c15ull * (stream + 1);
  for (size_t i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = (i % 3 == 0) ? static_cast<uint8_t>('a' + x % 4) : static_cast<uint8_t>(x >> 32);
  }
  return out;
}

bool write_stream(tern_client *client, const char *container, const std::string &name,
                  const std::vector<uint8_t> &data) {
  tern_image *image = nullptr;
  std::string props = "dma_host:" + name;
  if (!check(api->image_create(client, container, name.c_str(), reinterpret_cast<const uint8_t *>(props.data()),
                               props.size(), &image),
             "create"))
    return false;
  for (size_t off = 0; off < data.size(); off += 256 * 1024) {
    size_t n = std::min<size_t>(256 * 1024, data.size() - off);
    if (!check(api->image_write(image, data.data() + off, n), "write")) {
      api->image_free(image);
      return false;
    }
  }
  tern_image_statistics stats{};
  stats.struct_size = sizeof stats;
  bool ok = check(api->image_commit(image, &stats), "commit");
  api->image_free(image);
  return ok && stats.logical_bytes == data.size();
}

bool verify_stream(tern_client *client, const char *container, const std::string &name,
                   const std::vector<uint8_t> &data) {
  tern_image *image = nullptr;
  if (!check(api->image_open(client, container, name.c_str(), &image), "open")) return false;
  uint64_t size = 0;
  bool ok = check(api->image_size(image, &size), "size") && size == data.size();
  std::vector<uint8_t> buf(data.size());
  size_t got = 0;
  ok = ok && check(api->image_read(image, 0, buf.data(), buf.size(), &got), "read") && got == data.size() &&
       buf == data;
  api->image_free(image);
  return ok;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s SERVER CONTAINER PATH/TO/libtern.so\n", argv[0]);
    return 2;
  }
  void *lib = dlopen(argv[3], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  using entry_fn = const tern_plugin_api *(*)(uint32_t);
  auto entry = reinterpret_cast<entry_fn>(dlsym(lib, "tern_plugin_entry"));
  if (!entry) {
    std::fprintf(stderr, "dlsym tern_plugin_entry: %s\n", dlerror());
    return 1;
  }
  api = entry(TERN_ABI_VERSION);
  if (!api || api->abi_version != TERN_ABI_VERSION || api->struct_size < sizeof(tern_plugin_api)) {
    std::fprintf(stderr, "libtern does not implement ABI %u\n", TERN_ABI_VERSION);
    return 1;
  }

  tern_client_options opts;
  api->client_options_init_sized(&opts, sizeof opts);
  opts.server = argv[1];
  opts.user = std::getenv("TERN_USER") ? std::getenv("TERN_USER") : "admin";
  opts.password = std::getenv("TERN_PASSWORD");
  opts.fingerprint = std::getenv("TERN_FINGERPRINT");
  if (!opts.password) {
    std::fprintf(stderr, "set TERN_PASSWORD\n");
    return 2;
  }
  tern_client *client = nullptr;
  if (!check(api->client_open(&opts, &client), "connect")) return 1;

  const int streams = 4;
  const size_t len = 6 << 20;
  // The disk-pool view: is there room for the jobs?
  tern_capacity cap{};
  cap.struct_size = sizeof cap;
  if (!check(api->client_capacity(client, &cap), "capacity")) return 1;
  std::printf("pool: %llu bytes, %llu used, %llu free\n", static_cast<unsigned long long>(cap.total_bytes),
              static_cast<unsigned long long>(cap.used_bytes), static_cast<unsigned long long>(cap.free_bytes));
  if (cap.free_bytes < streams * len) {
    std::fprintf(stderr, "not enough room for %d streams of %zu bytes\n", streams, len);
    return 1;
  }
  std::vector<std::vector<uint8_t>> data;
  for (int i = 0; i < streams; i++) data.push_back(stream_data(i, len));
  std::vector<int> ok(streams, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < streams; i++) {
    threads.emplace_back([&, i] {
      std::string name = "stream-" + std::to_string(i);
      ok[i] = write_stream(client, argv[2], name, data[i]) && verify_stream(client, argv[2], name, data[i]);
    });
  }
  for (auto &t : threads) t.join();

  tern_client_statistics cs{};
  cs.struct_size = sizeof cs;
  check(api->client_stats(client, &cs), "stats");
  api->client_free(client);

  // A job the operator cancels: its own client, a writer thread, and a
  // cancel from this thread. The writer's call returns TERN_CANCELLED.
  tern_client *job = nullptr;
  if (!check(api->client_open(&opts, &job), "connect the job")) return 1;
  tern_status job_status = TERN_OK;
  std::thread writer([&] {
    tern_image *image = nullptr;
    job_status = api->image_create(job, argv[2], "cancelled-job", nullptr, 0, &image);
    std::vector<uint8_t> piece = stream_data(9, 1 << 20);
    for (int i = 0; job_status == TERN_OK && i < 4096; i++) {
      piece[0] = static_cast<uint8_t>(i);
      piece[1] = static_cast<uint8_t>(i >> 8);
      job_status = api->image_write(image, piece.data(), piece.size());
    }
    api->image_free(image);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  check(api->client_cancel(job), "cancel");
  writer.join();
  api->client_free(job);
  bool cancelled = job_status == TERN_CANCELLED;
  std::printf("cancelled job: %s\n", api->status_name(job_status));
  int failed = 0;
  for (int i = 0; i < streams; i++) failed += !ok[i];
  std::printf("%d streams round-tripped, %d failed; %llu logical bytes, dedup ratio %.2f\n", streams - failed, failed,
              static_cast<unsigned long long>(cs.logical_bytes), cs.dedup_ratio);
  dlclose(lib);
  return failed == 0 && cancelled ? 0 : 1;
}
