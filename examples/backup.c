/* backup: writes stdin into a new image, the way a DMA streams a backup.
 * usage: backup SERVER CONTAINER IMAGE < data */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SERVER CONTAINER IMAGE < data\n", argv[0]);
    return 2;
  }
  tern_client *client = connect_from_env(argv[1]);
  static const char props[] = "example-dma:backup.c";
  tern_image *image = NULL;
  tern_status st = tern_image_create(client, argv[2], argv[3], (const uint8_t *)props, sizeof props - 1, &image);
  if (st != TERN_OK) die("create image", st);

  size_t cap = 1 << 20;
  uint8_t *buf = malloc(cap);
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
          argv[2], argv[3], (unsigned long long)stats.logical_bytes, (unsigned long long)stats.new_bytes,
          (unsigned long long)stats.sent_bytes, stats.dedup_ratio);
  tern_image_free(image);
  tern_client_free(client);
  return 0;
}
