/* restore: writes an image to stdout.
 * usage: restore SERVER CONTAINER IMAGE > data */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SERVER CONTAINER IMAGE > data\n", argv[0]);
    return 2;
  }
  tern_client *client = connect_from_env(argv[1]);
  tern_image *image = NULL;
  tern_status st = tern_image_open(client, argv[2], argv[3], &image);
  if (st != TERN_OK) die("open image", st);
  uint64_t size = 0;
  st = tern_image_size(image, &size);
  if (st != TERN_OK) die("size", st);

  size_t cap = 1 << 20;
  uint8_t *buf = malloc(cap);
  uint64_t offset = 0;
  while (offset < size) {
    size_t got = 0;
    st = tern_image_read(image, offset, buf, cap, &got);
    if (st != TERN_OK) die("read", st);
    if (got == 0) break;
    if (fwrite(buf, 1, got, stdout) != got) {
      fprintf(stderr, "writing stdout failed\n");
      return 1;
    }
    offset += got;
  }
  free(buf);
  if (offset != size) {
    fprintf(stderr, "image ended at %llu of %llu bytes\n", (unsigned long long)offset, (unsigned long long)size);
    return 1;
  }
  tern_image_free(image);
  tern_client_free(client);
  return fflush(stdout) == 0 ? 0 : 1;
}
