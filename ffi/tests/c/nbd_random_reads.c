/* Random reads of an NBD export from several clients at once, each checked
 * against a local copy of the exported bytes.
 *
 *   nbd_random_reads URI SOURCE CLIENTS READS SEED
 *
 * Each client (a thread with its own libnbd handle and connection) reads
 * READS times at a random offset a random length of 4 KiB to 1 MiB (cut at
 * the end). Prints "ok N reads, B bytes" and exits 0 when every byte matched.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libnbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *uri;
static const uint8_t *source;
static uint64_t size;
static unsigned reads;
static uint64_t seed;

struct result {
  unsigned done;
  uint64_t bytes;
  char error[512];
};

static uint64_t next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static void *client(void *arg) {
  struct result *r = arg;
  uint64_t s = seed + (uint64_t)(uintptr_t)r * 0x9e3779b97f4a7c15ULL;
  struct nbd_handle *nbd = nbd_create();
  uint8_t *buf = malloc(1 << 20);
  if (!nbd || !buf || nbd_connect_uri(nbd, uri) == -1) {
    snprintf(r->error, sizeof r->error, "connect: %s", nbd_get_error());
    goto out;
  }
  for (unsigned i = 0; i < reads; i++) {
    uint64_t len = 4096 + next(&s) % ((1 << 20) - 4096 + 1);
    uint64_t off = next(&s) % size;
    if (off + len > size) len = size - off;
    if (nbd_pread(nbd, buf, len, off, 0) == -1) {
      snprintf(r->error, sizeof r->error, "pread %" PRIu64 "+%" PRIu64 ": %s", off, len,
               nbd_get_error());
      goto out;
    }
    if (memcmp(buf, source + off, len) != 0) {
      snprintf(r->error, sizeof r->error, "bytes at %" PRIu64 "+%" PRIu64 " differ", off, len);
      goto out;
    }
    r->done++;
    r->bytes += len;
  }
  nbd_shutdown(nbd, 0);
out:
  free(buf);
  nbd_close(nbd);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s URI SOURCE CLIENTS READS SEED\n", argv[0]);
    return 2;
  }
  uri = argv[1];
  unsigned clients = (unsigned)atoi(argv[3]);
  reads = (unsigned)atoi(argv[4]);
  seed = strtoull(argv[5], NULL, 10) | 1;
  int fd = open(argv[2], O_RDONLY);
  struct stat st;
  if (fd == -1 || fstat(fd, &st) == -1 || st.st_size == 0) {
    perror(argv[2]);
    return 1;
  }
  size = (uint64_t)st.st_size;
  source = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (source == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  pthread_t threads[64];
  struct result results[64];
  if (clients < 1 || clients > 64) return 2;
  memset(results, 0, sizeof results);
  for (unsigned i = 0; i < clients; i++) pthread_create(&threads[i], NULL, client, &results[i]);
  unsigned done = 0;
  uint64_t bytes = 0;
  int failed = 0;
  for (unsigned i = 0; i < clients; i++) {
    pthread_join(threads[i], NULL);
    if (results[i].error[0]) {
      fprintf(stderr, "client %u: %s\n", i, results[i].error);
      failed = 1;
    }
    done += results[i].done;
    bytes += results[i].bytes;
  }
  if (failed) return 1;
  printf("ok %u reads, %" PRIu64 " bytes\n", done, bytes);
  return 0;
}
