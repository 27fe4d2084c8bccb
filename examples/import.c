/* import: what a DMA on the replica site does: polls the import events of a
 * container, catalogs each replica (here: prints it) and acknowledges it.
 * usage: import SERVER CONTAINER */
#include <stdio.h>
#include <stdlib.h>

#include "common.h"

struct seen {
  uint64_t ids[1000];
  size_t count;
};

static int on_event(void *ctx, const tern_event_info *e) {
  struct seen *seen = ctx;
  printf("event %llu\timage=%s\tsize=%llu\tprops=%.*s\tfrom=%s/%s\tcopy=%s\n", (unsigned long long)e->id, e->image,
         (unsigned long long)e->size, (int)e->props_len, (const char *)e->props, e->source_container,
         e->source_image, e->copy_id);
  seen->ids[seen->count++] = e->id;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SERVER CONTAINER\n", argv[0]);
    return 2;
  }
  tern_client *client = connect_from_env(argv[1]);
  struct seen *seen = calloc(1, sizeof *seen);
  if (!seen) return 1;
  tern_status st = tern_events_poll(client, argv[2], 1000, on_event, seen);
  if (st != TERN_OK) die("events", st);
  /* Acknowledged only once cataloged: a crash before this line sees them again. */
  st = tern_events_ack(client, argv[2], seen->ids, seen->count);
  if (st != TERN_OK) die("ack", st);
  printf("acknowledged %zu\n", seen->count);
  free(seen);
  tern_client_free(client);
  return 0;
}
