/* Random 4 KiB read latency through NBD, one read at a time (libnbd).
 *
 *   nbd_latency URI READS SEED
 *
 * Pass "first": READS reads at random 4 KiB-aligned offsets of the export,
 * each timed alone. Pass "again": the same offsets in another order, so the
 * server and the plugin have seen every chunk once. Prints one line per
 * pass: its name, the median, p99 and largest latency in microseconds.
 * bench/nbdkit runs it against a cold and a warm ternd.
 */
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define READ_LEN 4096

static uint64_t rng_state;

static uint64_t next_random(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int pass(struct nbd_handle *nbd, const char *name, const uint64_t *offsets, size_t n) {
  static char buf[READ_LEN];
  double *us = malloc(n * sizeof *us);
  if (!us) return -1;
  for (size_t i = 0; i < n; i++) {
    double t = now_us();
    if (nbd_pread(nbd, buf, READ_LEN, offsets[i], 0) == -1) {
      fprintf(stderr, "pread at %" PRIu64 ": %s\n", offsets[i], nbd_get_error());
      free(us);
      return -1;
    }
    us[i] = now_us() - t;
  }
  qsort(us, n, sizeof *us, by_value);
  printf("%s median_us=%.0f p99_us=%.0f max_us=%.0f reads=%zu\n", name, us[n / 2],
         us[n * 99 / 100], us[n - 1], n);
  free(us);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s URI READS SEED\n", argv[0]);
    return 2;
  }
  size_t n = strtoul(argv[2], NULL, 10);
  rng_state = strtoull(argv[3], NULL, 10) | 1;
  struct nbd_handle *nbd = nbd_create();
  if (!nbd || nbd_connect_uri(nbd, argv[1]) == -1) {
    fprintf(stderr, "%s\n", nbd_get_error());
    return 1;
  }
  int64_t size = nbd_get_size(nbd);
  uint64_t *offsets = malloc(n * sizeof *offsets);
  if (size < READ_LEN || n == 0 || !offsets) {
    fprintf(stderr, "an export of %" PRId64 " bytes, %zu reads\n", size, n);
    return 1;
  }
  uint64_t blocks = (uint64_t)size / READ_LEN;
  for (size_t i = 0; i < n; i++) offsets[i] = next_random() % blocks * READ_LEN;
  int r = pass(nbd, "first", offsets, n);
  for (size_t i = n - 1; i > 0; i--) {
    size_t j = next_random() % (i + 1);
    uint64_t t = offsets[i];
    offsets[i] = offsets[j];
    offsets[j] = t;
  }
  if (r == 0) r = pass(nbd, "again", offsets, n);
  nbd_shutdown(nbd, 0);
  nbd_close(nbd);
  free(offsets);
  return r == 0 ? 0 : 1;
}
