/* list: prints the containers, or the images of one container.
 * usage: list SERVER [CONTAINER [PREFIX]] */
#include <stdio.h>

#include "common.h"

static int print_container(void *ctx, const tern_container_info *c) {
  (void)ctx;
  printf("%s\tgroup=%s\timages=%llu\tbytes=%llu\n", c->name, c->group, (unsigned long long)c->images,
         (unsigned long long)c->logical_bytes);
  return 0;
}

static int print_image(void *ctx, const tern_image_info *i) {
  (void)ctx;
  printf("%s\tsize=%llu\tchunks=%llu\tcreated=%llu\tlocation=%s\tprops=%.*s\n", i->name,
         (unsigned long long)i->size, (unsigned long long)i->chunks, (unsigned long long)i->created, i->location,
         (int)i->props_len, (const char *)i->props);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: %s SERVER [CONTAINER [PREFIX]]\n", argv[0]);
    return 2;
  }
  tern_client *client = connect_from_env(argv[1]);
  tern_status st = argc == 2 ? tern_container_list(client, print_container, NULL)
                             : tern_image_list(client, argv[2], argc == 4 ? argv[3] : NULL, print_image, NULL);
  if (st != TERN_OK) die("list", st);
  tern_client_free(client);
  return 0;
}
