/* synth: builds a synthetic full on the server, the way a DMA's storage
 * plugin merges its last full and the incrementals since without reading
 * the client again. The DMA's catalog says where each run of the new full
 * comes from; here it is read from stdin, one run per line, in order:
 *
 *     SOURCE-IMAGE SOURCE-OFFSET LENGTH
 *
 * e.g. "full 0 1048576", then "incr 0 4096" (the changed block, which the
 * incremental holds), then "full 1052672 ...". Every run is an extent of a
 * committed image of CONTAINER: no data crosses the network for it.
 * usage: synth SERVER CONTAINER NEW-IMAGE < runs */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s SERVER CONTAINER NEW-IMAGE < runs\n", argv[0]);
    return 2;
  }
  const char *server = argv[1], *container = argv[2], *name = argv[3];
  tern_client *client = connect_from_env(server);
  static const char props[] = "example-dma:synth.c";
  tern_image *image = NULL;
  tern_status st = tern_image_create(client, container, name, (const uint8_t *)props, sizeof props - 1, &image);
  if (st != TERN_OK) die("create image", st);

  char source[256];
  uint64_t offset, length, runs = 0, total = 0;
  int fields;
  while ((fields = scanf("%255s %" SCNu64 " %" SCNu64, source, &offset, &length)) == 3) {
    st = tern_image_write_from(image, container, source, offset, length);
    if (st != TERN_OK) {
      /* A refused run (no such image, past its end) leaves the image as it
       * was; this example gives up all the same. */
      fprintf(stderr, "run %" PRIu64 " (%s at %" PRIu64 ", %" PRIu64 " bytes): ", runs, source, offset, length);
      tern_image_free(image); /* aborts the image */
      die("write_from", st);
    }
    runs++;
    total += length;
  }
  if (fields != EOF) {
    fprintf(stderr, "run %" PRIu64 ": expected SOURCE-IMAGE SOURCE-OFFSET LENGTH\n", runs);
    tern_image_free(image); /* aborts the image */
    tern_client_free(client);
    return 2;
  }

  tern_image_statistics stats = {.struct_size = sizeof stats};
  st = tern_image_commit(image, &stats);
  if (st != TERN_OK) die("commit", st);
  fprintf(stderr, "committed %s/%s from %" PRIu64 " runs: %" PRIu64 " bytes, %" PRIu64 " new bytes stored, %" PRIu64 " bytes sent\n",
          container, name, runs, stats.logical_bytes, stats.new_bytes, stats.sent_bytes);
  if (stats.logical_bytes != total) {
    fprintf(stderr, "the image holds %" PRIu64 " bytes, but the runs add up to %" PRIu64 "\n", stats.logical_bytes, total);
    return 1;
  }
  tern_image_free(image);
  tern_client_free(client);
  return 0;
}
