/* copy: asks the server (the source) to copy an image to a replication
 * partner, and waits for it, printing progress.
 * usage: copy SERVER CONTAINER NAME PARTNER TO_CONTAINER
 * Exits 0 once the partner has committed the replica. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static const char *state_name(tern_copy_state s) {
  switch (s) {
    case TERN_COPY_QUEUED: return "queued";
    case TERN_COPY_RUNNING: return "running";
    case TERN_COPY_DONE: return "done";
    case TERN_COPY_FAILED: return "failed";
    case TERN_COPY_CANCELLED: return "cancelled";
    case TERN_COPY_IMPORTED: return "imported";
  }
  return "?";
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s SERVER CONTAINER NAME PARTNER TO_CONTAINER\n", argv[0]);
    return 2;
  }
  tern_client *client = connect_from_env(argv[1]);
  char id[TERN_COPY_ID_LEN + 1];
  tern_status st = tern_copy_start(client, argv[2], argv[3], argv[4], argv[5], NULL, id);
  if (st != TERN_OK) die("copy", st);
  printf("copy %s\n", id);
  tern_copy_status status;
  for (;;) {
    memset(&status, 0, sizeof status);
    status.struct_size = sizeof status;
    st = tern_copy_get_status(client, id, &status);
    if (st != TERN_OK) die("status", st);
    fprintf(stderr, "%s %llu/%llu bytes, %llu sent%s%s\n",
            status.paused ? "paused (schedule)" : state_name(status.state),
            (unsigned long long)status.done_bytes, (unsigned long long)status.logical_bytes,
            (unsigned long long)status.sent_bytes, status.path[0] ? " via " : "", status.path);
    if (status.state != TERN_COPY_QUEUED && status.state != TERN_COPY_RUNNING) break;
    usleep(200 * 1000);
  }
  tern_client_free(client);
  printf("%s sent=%llu chunks=%llu\n", state_name(status.state), (unsigned long long)status.sent_bytes,
         (unsigned long long)status.sent_chunks);
  if (status.state != TERN_COPY_DONE && status.state != TERN_COPY_IMPORTED) {
    fprintf(stderr, "copy %s: %s\n", state_name(status.state), status.reason);
    return 1;
  }
  return 0;
}
