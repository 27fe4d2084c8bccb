/* recall: brings an image held in the cloud tier back to local storage
 * (before a large restore), and prints the chunk bytes stored for it.
 * usage: recall SERVER CONTAINER IMAGE */
#include <stdint.h>
#include <stdio.h>

#include "common.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SERVER CONTAINER IMAGE\n", argv[0]);
    return 2;
  }
  tern_client *client = connect_from_env(argv[1]);
  uint64_t stored = 0;
  tern_status st = tern_image_recall(client, argv[2], argv[3], &stored);
  if (st != TERN_OK) die("recall", st);
  printf("recalled %s/%s: %llu bytes stored\n", argv[2], argv[3], (unsigned long long)stored);
  tern_client_free(client);
  return 0;
}
