/* Shared by the examples: connect with the TERN_* environment variables. */
#ifndef TERN_EXAMPLES_COMMON_H
#define TERN_EXAMPLES_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "tern.h"

static void die(const char *what, tern_status st) {
  fprintf(stderr, "%s: %s: %s\n", what, tern_status_name(st), tern_last_error());
  exit(1);
}

/* Opens a client to `server` as TERN_USER (default "admin") with TERN_PASSWORD,
 * pinning TERN_FINGERPRINT if set (else trust on first use). TERN_PLAIN=1 uses
 * the loopback plaintext port. */
static tern_client *connect_from_env(const char *server) {
  tern_client_options opts;
  tern_client_options_init(&opts);
  opts.server = server;
  opts.user = getenv("TERN_USER") ? getenv("TERN_USER") : "admin";
  opts.password = getenv("TERN_PASSWORD");
  opts.fingerprint = getenv("TERN_FINGERPRINT");
  opts.plain = getenv("TERN_PLAIN") && getenv("TERN_PLAIN")[0] == '1';
  if (!opts.password) {
    fprintf(stderr, "set TERN_PASSWORD\n");
    exit(2);
  }
  tern_client *client = NULL;
  tern_status st = tern_client_open(&opts, &client);
  if (st != TERN_OK) die("connect", st);
  return client;
}

#endif
