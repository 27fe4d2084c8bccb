/* backup: writes stdin into a new image, the way a DMA streams a backup.
 * With --resume it continues an image a crashed run left incomplete: the
 * server says how much it holds, and the rest of stdin is sent.
 * usage: backup [--resume] SERVER CONTAINER IMAGE < data */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* Reads and drops `n` bytes of stdin: the part the server already holds. */
static int skip_stdin(uint8_t *buf, size_t cap, uint64_t n) {
  while (n > 0) {
    size_t want = n < cap ? (size_t)n : cap;
    size_t got = fread(buf, 1, want, stdin);
    if (got == 0) return -1;
    n -= got;
  }
  return 0;
}

int main(int argc, char **argv) {
  int resume = argc > 1 && strcmp(argv[1], "--resume") == 0;
  if (argc - resume != 4) {
    fprintf(stderr, "usage: %s [--resume] SERVER CONTAINER IMAGE < data\n", argv[0]);
    return 2;
  }
  const char *server = argv[1 + resume], *container = argv[2 + resume], *name = argv[3 + resume];
  tern_client *client = connect_from_env(server);
  static const char props[] = "example-dma:backup.c";
  tern_image *image = NULL;
  uint64_t offset = 0;
  tern_status st = TERN_NOT_FOUND;
  if (resume) {
    st = tern_image_resume(client, container, name, &image, &offset);
    if (st == TERN_NOT_FOUND)
      fprintf(stderr, "nothing to resume (%s): starting a new image\n", tern_last_error());
    else if (st != TERN_OK)
      die("resume image", st);
  }
  if (st == TERN_NOT_FOUND) {
    st = tern_image_create(client, container, name, (const uint8_t *)props, sizeof props - 1, &image);
    if (st != TERN_OK) die("create image", st);
  }

  size_t cap = 1 << 20;
  uint8_t *buf = malloc(cap);
  if (offset > 0) {
    fprintf(stderr, "resuming %s/%s at offset %llu\n", container, name, (unsigned long long)offset);
    if (skip_stdin(buf, cap, offset) != 0) {
      fprintf(stderr, "stdin ended before the resume offset: it is not the same data\n");
      tern_image_free(image); /* aborts the image */
      tern_client_free(client);
      return 1;
    }
  }
  size_t n;
  while ((n = fread(buf, 1, cap, stdin)) > 0) {
    st = tern_image_write(image, buf, n);
    if (st != TERN_OK) die("write", st);
  }
  free(buf);
  if (ferror(stdin)) {
    fprintf(stderr, "reading stdin failed\n");
    tern_image_free(image); /* aborts the image */
    tern_client_free(client);
    return 1;
  }

  tern_image_statistics stats = {.struct_size = sizeof stats};
  st = tern_image_commit(image, &stats);
  if (st != TERN_OK) die("commit", st);
  fprintf(stderr, "committed %s/%s: %llu bytes, %llu new bytes stored, %llu bytes sent, dedup ratio %.2f\n",
          container, name, (unsigned long long)stats.logical_bytes, (unsigned long long)stats.new_bytes,
          (unsigned long long)stats.sent_bytes, stats.dedup_ratio);
  tern_image_free(image);
  tern_client_free(client);
  return 0;
}
