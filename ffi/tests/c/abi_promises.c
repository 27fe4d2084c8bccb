/* The C ABI's promises to old and careful callers, checked from C.
 *
 *   abi_promises            the options struct of libtern 0.1 (no server)
 *   abi_promises SERVER     tern_last_error() survives tern_*_free()
 *
 * Prints "ok" and exits 0 when every promise holds; else names the broken one.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../../examples/common.h"

/* tern_client_options exactly as libtern 0.1's header declared it. */
struct options_v01 {
  size_t struct_size;
  const char *server;
  const char *user;
  const char *password;
  const char *fingerprint;
  uint32_t write_mode;
  uint32_t plain;
  uint32_t remember_server;
  uint32_t connections;
  uint32_t secure_connect;
  uint32_t grace_period_secs;
  uint32_t allow_tls12;
  uint64_t cache_memory_bytes;
  uint64_t cache_disk_bytes;
  const char *spill_dir;
  const char *client_cert;
  const char *client_key;
};

#define GUARD 0xA5
#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

static int guard_intact(const unsigned char *g, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (g[i] != GUARD) return 0;
  return 1;
}

static int old_options_are_not_overrun(void) {
  if (offsetof(tern_client_options, call_timeout_ms) != sizeof(struct options_v01))
    FAIL("the 0.1 layout above is not a prefix of tern_client_options");

  /* A 0.1 program calls the symbol itself (the parentheses skip the macro). */
  struct { struct options_v01 o; unsigned char guard[64]; } old;
  memset(&old, GUARD, sizeof old);
  (tern_client_options_init)((tern_client_options *)&old.o);
  if (!guard_intact(old.guard, sizeof old.guard))
    FAIL("tern_client_options_init wrote past a libtern 0.1 options struct");
  if (old.o.struct_size != sizeof(struct options_v01) || old.o.remember_server != 1 || old.o.server)
    FAIL("tern_client_options_init did not fill the 0.1 struct (struct_size %zu)", old.o.struct_size);

  /* This header's programs get the whole struct, and not a byte more. */
  struct { tern_client_options o; unsigned char guard[64]; } cur;
  memset(&cur, GUARD, sizeof cur);
  tern_client_options_init(&cur.o);
  if (!guard_intact(cur.guard, sizeof cur.guard))
    FAIL("tern_client_options_init wrote past tern_client_options");
  if (cur.o.struct_size != sizeof(tern_client_options) || cur.o.call_timeout_ms != 0)
    FAIL("tern_client_options_init did not fill the current struct");

  /* A size below the first version writes nothing. */
  memset(&cur, GUARD, sizeof cur);
  tern_client_options_init_sized(&cur.o, 8);
  if (!guard_intact((const unsigned char *)&cur, sizeof cur))
    FAIL("tern_client_options_init_sized wrote into a struct too small for any version");
  return 0;
}

static int errors_outlive_free(const char *server) {
  tern_client *client = connect_from_env(server);
  tern_status st = tern_container_create(client, "abi");
  if (st != TERN_OK && st != TERN_ALREADY_EXISTS) die("container create", st);

  /* A commit that fails, then the pattern the header promises works. */
  tern_image *img = NULL;
  st = tern_image_create(client, "abi", "aborted", NULL, 0, &img);
  if (st != TERN_OK) die("image create", st);
  if (tern_image_abort(img) != TERN_OK) die("image abort", TERN_INTERNAL);
  if (tern_image_commit(img, NULL) == TERN_OK)
    FAIL("commit of an aborted image succeeded");
  tern_image_free(img);
  if (tern_last_error()[0] == '\0')
    FAIL("tern_image_free cleared the failed commit's error");
  printf("after tern_image_free: %s\n", tern_last_error());

  if (tern_container_create(client, "..") == TERN_OK)
    FAIL("container \"..\" was accepted");
  tern_client_free(client);
  if (tern_last_error()[0] == '\0')
    FAIL("tern_client_free cleared the failed call's error");
  printf("after tern_client_free: %s\n", tern_last_error());
  return 0;
}

int main(int argc, char **argv) {
  if (old_options_are_not_overrun()) return 1;
  if (argc > 1 && errors_outlive_free(argv[1])) return 1;
  printf("ok\n");
  return 0;
}
