/* nbdkit-tern-plugin: tern images as NBD exports, through libtern.
 *
 *   nbdkit tern server=HOST[:PORT] container=C image=N [mode=read|write]
 *               [size=BYTES] [resume=on] [user=U] [fingerprint=sha256:...]
 *               [readers=N]
 *
 * Credentials as the tern CLI takes them: TERN_PASSWORD (required),
 * TERN_FINGERPRINT (or fingerprint=), TERN_USER (or user=, default admin).
 *
 * mode=read (the default): the committed image as a read-only export of its
 * size (instant access). Thread model PARALLEL: a tern_image belongs to one
 * thread at a time, so each request borrows a reader from a pool of at most
 * `readers` (default 8) opened on the one shared client. A request that
 * continues the one before it waits up to 200 ms for that one's reader (a
 * stream stays on one reader, whose read-ahead grows); others take a free
 * reader, never waiting on another's long call on the same one.
 *
 * mode=write: a new image of `size` bytes (a backup). Writes must come in
 * order, as `qemu-img convert` sends them: a write at the end is appended, a
 * write past it fills the gap with zeros, zero and trim requests append
 * zeros (which dedup to nothing), a write behind the end fails naming the
 * offset. The image is made once 1 MiB has arrived, so a connection that
 * only probes and zeroes a sector (qemu-img's first) leaves nothing. The
 * first flush with every byte up to `size` written commits the image, and
 * its answer tells the client whether that worked; any other end (a
 * disconnect, a short disk, no flush, a crash) never commits it. A client
 * that leaves before that leaves the image incomplete (suspended: durable
 * up to the last chunk boundary sent), and a run with resume=on continues
 * it: the writes up to where it stopped are taken as the bytes the server
 * holds already (the same disk must be read again) and skipped. Thread
 * model SERIALIZE_REQUESTS: one request at a time, in arrival order.
 *
 * Memory is bounded whatever the image size: the readers' buffers, and for
 * writing libtern's pipeline, 1 MiB staged and one 1 MiB buffer of zeros.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tern.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
#define ZEROS_LEN (1 << 20)
#define STAGE_LEN (1 << 20)
#define MAX_READERS 64

static char *server, *container, *image, *user, *fingerprint;
static bool write_mode, resume;
static int64_t declared_size = -1;
static unsigned readers_max = 8;
static tern_client *client;
static const uint8_t zeros[ZEROS_LEN];

/* Fails the request with the errno that fits `st`, the tern message in nbdkit's log. */
static int fail(const char *what, tern_status st) {
  nbdkit_error("tern: %s: %s: %s", what, tern_status_name(st), tern_last_error());
  switch (st) {
  case TERN_NOT_FOUND: errno = ENOENT; break;
  case TERN_NO_SPACE: errno = ENOSPC; break;
  case TERN_INVALID_ARGUMENT: errno = EINVAL; break;
  case TERN_DENIED: case TERN_AUTH: case TERN_UNTRUSTED: errno = EPERM; break;
  case TERN_BUSY: case TERN_ALREADY_EXISTS: errno = EBUSY; break;
  case TERN_TIMEOUT: errno = ETIMEDOUT; break;
  case TERN_CANCELLED: errno = ECANCELED; break;
  case TERN_CONNECT: errno = ENOTCONN; break;
  default: errno = EIO; break;
  }
  return -1;
}

static int set_string(char **field, const char *value) {
  free(*field);
  *field = strdup(value);
  if (!*field) {
    nbdkit_error("strdup: %m");
    return -1;
  }
  return 0;
}

static int tern_config(const char *key, const char *value) {
  if (strcmp(key, "server") == 0) return set_string(&server, value);
  if (strcmp(key, "container") == 0) return set_string(&container, value);
  if (strcmp(key, "image") == 0) return set_string(&image, value);
  if (strcmp(key, "user") == 0) return set_string(&user, value);
  if (strcmp(key, "fingerprint") == 0) return set_string(&fingerprint, value);
  if (strcmp(key, "mode") == 0) {
    if (strcmp(value, "read") == 0) write_mode = false;
    else if (strcmp(value, "write") == 0) write_mode = true;
    else {
      nbdkit_error("mode must be read or write, not %s", value);
      return -1;
    }
    return 0;
  }
  if (strcmp(key, "resume") == 0) {
    int r = nbdkit_parse_bool(value);
    if (r == -1) return -1;
    resume = r;
    return 0;
  }
  if (strcmp(key, "size") == 0) {
    declared_size = nbdkit_parse_size(value);
    return declared_size < 0 ? -1 : 0;
  }
  if (strcmp(key, "readers") == 0) {
    if (nbdkit_parse_unsigned("readers", value, &readers_max) == -1) return -1;
    if (readers_max < 1 || readers_max > MAX_READERS) {
      nbdkit_error("readers must be 1 to %d", MAX_READERS);
      return -1;
    }
    return 0;
  }
  nbdkit_error("unknown parameter %s", key);
  return -1;
}

static int tern_config_complete(void) {
  if (!server || !container || !image) {
    nbdkit_error("server=, container= and image= are required");
    return -1;
  }
  if (!getenv("TERN_PASSWORD")) {
    nbdkit_error("set TERN_PASSWORD");
    return -1;
  }
  if (write_mode && declared_size < 0) {
    nbdkit_error("mode=write needs size=BYTES (the disk's size)");
    return -1;
  }
  if (!write_mode && (declared_size >= 0 || resume)) {
    nbdkit_error("size= and resume= are for mode=write; a read export has its image's size");
    return -1;
  }
  return 0;
}

static int tern_thread_model(void) {
  return write_mode ? NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS : NBDKIT_THREAD_MODEL_PARALLEL;
}

/* libtern runs threads of its own: the client is opened after nbdkit has
 * forked into the background, not before. */
static int tern_after_fork(void) {
  tern_client_options opts;
  tern_client_options_init(&opts);
  opts.server = server;
  opts.user = user ? user : getenv("TERN_USER") ? getenv("TERN_USER") : "admin";
  opts.password = getenv("TERN_PASSWORD");
  opts.fingerprint = fingerprint ? fingerprint : getenv("TERN_FINGERPRINT");
  tern_status st = tern_client_open(&opts, &client);
  if (st != TERN_OK) return fail("connecting", st);
  return 0;
}

static void tern_unload(void) {
  tern_client_free(client);
  free(server);
  free(container);
  free(image);
  free(user);
  free(fingerprint);
}

/* One NBD connection. */
struct handle {
  /* mode=read: readers lent to one request at a time. */
  pthread_mutex_t lock;
  pthread_cond_t freed;
  tern_image *readers[MAX_READERS];
  bool lent[MAX_READERS];
  uint64_t read_end[MAX_READERS];  /* where each reader's last read was to end */
  uint64_t chain_end[MAX_READERS]; /* where the last read lent or waiting on it ends */
  unsigned waiting[MAX_READERS];   /* reads waiting their turn on it */
  unsigned opened;
  uint64_t size;
  /* mode=write */
  tern_image *writer;
  uint8_t *staged;  /* the first bytes, until STAGE_LEN make it a backup */
  size_t staged_len;
  uint64_t end;     /* bytes appended so far */
  uint64_t resumed_at; /* bytes the server held when the image was resumed */
  bool committed;   /* a flush with the whole disk written committed it */
  bool failed;      /* a write failed: the image is lost, never committed */
};

static void *tern_open(int readonly) {
  if (write_mode && readonly) {
    nbdkit_error("mode=write cannot serve a read-only connection");
    return NULL;
  }
  struct handle *h = calloc(1, sizeof *h);
  if (!h) {
    nbdkit_error("calloc: %m");
    return NULL;
  }
  pthread_mutex_init(&h->lock, NULL);
  pthread_cond_init(&h->freed, NULL);
  if (write_mode) {
    /* The image is created by the first write: a client that only looks
     * (qemu-img opens its target once to probe it) leaves nothing behind. */
    h->size = (uint64_t)declared_size;
    return h;
  }
  tern_status st = tern_image_open(client, container, image, &h->readers[0]);
  if (st == TERN_OK) {
    h->opened = 1;
    st = tern_image_size(h->readers[0], &h->size);
  }
  if (st != TERN_OK) {
    fail("opening the image", st);
    tern_image_free(h->readers[0]);
    free(h);
    return NULL;
  }
  return h;
}

/* Resumes the incomplete image (resume=on); 1 if there is none. */
static int resume_image(struct handle *h) {
  tern_status st = tern_image_resume(client, container, image, &h->writer, &h->resumed_at);
  if (st == TERN_NOT_FOUND) {
    nbdkit_debug("tern: no incomplete image %s/%s to resume: starting a new one", container, image);
    return 1;
  }
  if (st != TERN_OK) return fail("resuming the image", st);
  if (h->resumed_at > h->size) {
    nbdkit_error("tern: %s/%s holds %" PRIu64 " bytes already, more than size=%" PRIu64,
                 container, image, h->resumed_at, h->size);
    errno = EINVAL;
    return -1;
  }
  nbdkit_debug("tern: resumed %s/%s at offset %" PRIu64 ": the bytes before it are skipped",
               container, image, h->resumed_at);
  return 0;
}

/* Creates (or resumes) the image and sends it what was staged and is not
 * there already. */
static int start_image(struct handle *h) {
  tern_status st = TERN_OK;
  int resumed = resume ? resume_image(h) : 1;
  if (resumed == -1) {
    h->failed = true;
    return -1;
  }
  if (resumed == 1) st = tern_image_create(client, container, image, NULL, 0, &h->writer);
  if (st == TERN_OK && h->staged_len > h->resumed_at)
    st = tern_image_write(h->writer, h->staged + h->resumed_at, h->staged_len - h->resumed_at);
  free(h->staged);
  h->staged = NULL;
  if (st != TERN_OK) {
    h->failed = true;
    return fail(h->writer ? "writing" : "creating the image", st);
  }
  return 0;
}

/* Appends `len` bytes (buf NULL: zeros). The first STAGE_LEN bytes are only
 * staged: a client that probes its target and zeroes its first sectors
 * (qemu-img convert does, on a connection of its own, before the real one)
 * creates no image, so none is left being written in the real one's way. */
static int append(struct handle *h, const void *buf, uint64_t len) {
  const uint8_t *p = buf;
  if (!h->writer && h->staged_len + len <= STAGE_LEN) {
    if (!h->staged && !(h->staged = malloc(STAGE_LEN))) {
      nbdkit_error("malloc: %m");
      return -1;
    }
    if (p) memcpy(h->staged + h->staged_len, p, len);
    else memset(h->staged + h->staged_len, 0, len);
    h->staged_len += len;
    h->end += len;
    return 0;
  }
  if (!h->writer && start_image(h) == -1) return -1;
  if (h->end < h->resumed_at) {
    /* The resumed image holds these bytes already. */
    uint64_t skip = h->resumed_at - h->end < len ? h->resumed_at - h->end : len;
    h->end += skip;
    len -= skip;
    if (p) p += skip;
  }
  while (len > 0) {
    size_t n = len > ZEROS_LEN ? ZEROS_LEN : (size_t)len;
    tern_status st = tern_image_write(h->writer, p ? p : zeros, n);
    if (st != TERN_OK) {
      h->failed = true;
      return fail("writing", st);
    }
    h->end += n;
    len -= n;
    if (p) p += n;
  }
  return 0;
}

/* Commits the image: at a flush once every byte up to `size` is written,
 * so that the client hears whether its backup is safe. */
static int commit(struct handle *h) {
  if (!h->writer && start_image(h) == -1) return -1;
  tern_image_statistics stats = {.struct_size = sizeof stats};
  tern_status st = tern_image_commit(h->writer, &stats);
  if (st != TERN_OK) {
    h->failed = true;
    return fail("committing", st);
  }
  h->committed = true;
  nbdkit_debug("tern: committed %s/%s: %" PRIu64 " bytes, %" PRIu64 " sent (resumed at %" PRIu64
               ")", container, image, h->end, stats.sent_bytes, h->resumed_at);
  return 0;
}

/* A client left before the image was committed: it stays incomplete, for
 * a run with resume=on (unless a write failed: then it is lost). */
static void suspend(struct handle *h) {
  nbdkit_error("tern: %s/%s not committed: the client left at %" PRIu64 " of %" PRIu64
               " bytes%s", container, image, h->end, h->size,
               h->end == h->size ? " without a final flush" : "");
  if (h->failed) {
    tern_image_abort(h->writer);
    return;
  }
  uint64_t offset = 0;
  tern_status st = tern_image_suspend(h->writer, &offset);
  if (st != TERN_OK) {
    fail("suspending the image (the server keeps it from its last checkpoint)", st);
    return;
  }
  nbdkit_error("tern: %s/%s left incomplete at %" PRIu64 " bytes: the same backup with "
               "resume=on continues from there", container, image, offset);
}

static void tern_close(void *handle) {
  struct handle *h = handle;
  if (h->writer && !h->committed) {
    suspend(h);
  } else if (write_mode && !h->committed) {
    nbdkit_debug("tern: %s/%s: %" PRIu64 " bytes staged and dropped; no image was made",
                 container, image, h->end);
  }
  tern_image_free(h->writer);
  free(h->staged);
  for (unsigned i = 0; i < h->opened; i++) tern_image_free(h->readers[i]);
  pthread_cond_destroy(&h->freed);
  pthread_mutex_destroy(&h->lock);
  free(h);
}

static int64_t tern_get_size(void *handle) {
  return (int64_t)((struct handle *)handle)->size;
}

static int tern_can_write(void *handle) { (void)handle; return write_mode; }
static int tern_can_flush(void *handle) { (void)handle; return write_mode; }
static int tern_can_trim(void *handle) { (void)handle; return write_mode; }
static int tern_can_zero(void *handle) { (void)handle; return write_mode; }
/* Every connection of a read export sees the same committed bytes. */
static int tern_can_multi_conn(void *handle) { (void)handle; return !write_mode; }

/* How far behind a request a reader's last read may have ended for the
 * reader to go on to it: libtern then skips to it within what it has asked
 * for already, instead of starting over. */
#define NEAR (1 << 20)

/* How long a read waits its turn on the reader of the requests before it
 * (see borrow) before it takes another: longer than such a read takes when
 * all is well, short enough that a stalled one holds up nobody else. */
#define TURN_WAIT_NS (200 * 1000 * 1000L)

/* Free, with no request waiting for it. */
static bool available(struct handle *h, unsigned i) {
  return !h->lent[i] && h->waiting[i] == 0;
}

/* The available reader whose last read ended closest before `offset`,
 * within NEAR; else -1. */
static int nearest_available(struct handle *h, uint64_t offset) {
  int best = -1;
  for (unsigned i = 0; i < h->opened; i++) {
    if (!available(h, i) || h->read_end[i] > offset || offset - h->read_end[i] > NEAR) continue;
    if (best == -1 || h->read_end[i] > h->read_end[best]) best = (int)i;
  }
  return best;
}

/* The reader whose requests (served or waiting) end at `offset`; else -1. */
static int chain_ending_at(struct handle *h, uint64_t offset) {
  for (unsigned i = 0; i < h->opened; i++)
    if (h->chain_end[i] == offset) return (int)i;
  return -1;
}

/* Waits, up to TURN_WAIT_NS, until reader `i` is free with its last read
 * ending at `offset`; true if it is. */
static bool wait_turn(struct handle *h, unsigned i, uint64_t offset) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_nsec += TURN_WAIT_NS;
  until.tv_sec += until.tv_nsec / 1000000000L;
  until.tv_nsec %= 1000000000L;
  h->waiting[i]++;
  while (h->lent[i] || h->read_end[i] != offset)
    if (pthread_cond_timedwait(&h->freed, &h->lock, &until) == ETIMEDOUT) break;
  h->waiting[i]--;
  return !h->lent[i] && h->read_end[i] == offset;
}

/* Borrows a reader for a read of `count` bytes at `offset`.
 *
 * A read that continues the requests of one reader (served or waiting)
 * waits its turn on that reader: a client reading in order with many
 * requests in flight (nbdcopy, qemu-img, the kernel's read-ahead) stays on
 * one reader per stream, so libtern's read-ahead grows and the chunk across
 * two requests' boundary is fetched once. A turn that does not come within
 * TURN_WAIT_NS (the read before is slow, or failed) is given up.
 *
 * Otherwise: an available reader that read just before `offset`, else a
 * new one while fewer than readers_max are open (opened under the lock: at
 * most readers_max times, and requests holding readers read on meanwhile),
 * else any available one, else the first one given back. */
static int borrow(struct handle *h, uint64_t offset, uint32_t count, unsigned *slot) {
  int r = 0, found;
  bool chained = false;
  pthread_mutex_lock(&h->lock);
  if ((found = chain_ending_at(h, offset)) != -1) {
    h->chain_end[found] = offset + count;
    chained = wait_turn(h, (unsigned)found, offset);
    if (!chained) {
      /* The reads after this one follow it to the reader it takes. */
      if (h->chain_end[found] == offset + count) h->chain_end[found] = offset;
      found = -1;
    }
  }
  while (found == -1) {
    if ((found = nearest_available(h, offset)) != -1) break;
    if (h->opened < readers_max) {
      tern_status st = tern_image_open(client, container, image, &h->readers[h->opened]);
      if (st != TERN_OK) {
        r = fail("opening another reader", st);
        break;
      }
      found = (int)h->opened++;
      break;
    }
    for (found = 0; found < (int)h->opened && !available(h, (unsigned)found); found++)
      ;
    if (found < (int)h->opened) break;
    found = -1;
    pthread_cond_wait(&h->freed, &h->lock);
  }
  if (r == 0) {
    *slot = (unsigned)found;
    h->lent[found] = true;
    if (!chained) h->chain_end[found] = offset + count;
  }
  pthread_mutex_unlock(&h->lock);
  return r;
}

/* Gives a reader back after a read that was to end at `end`, done or not:
 * a request waiting its turn on this reader begins there. */
static void give_back(struct handle *h, unsigned slot, uint64_t end) {
  pthread_mutex_lock(&h->lock);
  h->read_end[slot] = end;
  h->lent[slot] = false;
  /* Every waiter: the one whose turn it is may not be first. */
  pthread_cond_broadcast(&h->freed);
  pthread_mutex_unlock(&h->lock);
}

static int tern_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags) {
  (void)flags;
  struct handle *h = handle;
  if (write_mode) {
    /* Nothing of an image being written can be read back yet. */
    if (offset >= h->end) {
      memset(buf, 0, count);
      return 0;
    }
    nbdkit_error("tern: mode=write: offset %" PRIu64 " was written already and cannot be read back",
                 offset);
    errno = EIO;
    return -1;
  }
  unsigned slot = 0;
  if (borrow(h, offset, count, &slot) == -1) return -1;
  uint64_t end = offset + count;
  uint8_t *p = buf;
  int r = 0;
  while (count > 0) {
    size_t n = 0;
    tern_status st = tern_image_read(h->readers[slot], offset, p, count, &n);
    if (st != TERN_OK) {
      r = fail("reading", st);
      break;
    }
    if (n == 0) {
      nbdkit_error("tern: the image ended at %" PRIu64 ", before the request did", offset);
      errno = EIO;
      r = -1;
      break;
    }
    p += n;
    offset += n;
    count -= (uint32_t)n;
  }
  give_back(h, slot, end);
  return r;
}

/* Appends `count` bytes at `offset` (NULL: zeros), in order. */
static int write_at(struct handle *h, const void *buf, uint32_t count, uint64_t offset) {
  if (h->committed) {
    nbdkit_error("tern: %s/%s is committed: no more writes", container, image);
    errno = EROFS;
    return -1;
  }
  if (h->failed) {
    nbdkit_error("tern: an earlier write failed; the image is not written further");
    errno = EIO;
    return -1;
  }
  if (offset < h->end) {
    nbdkit_error("tern: a write at offset %" PRIu64 " is behind the end already written (%" PRIu64
                 "): writes must come in order (qemu-img convert without -W)",
                 offset, h->end);
    errno = EINVAL;
    return -1;
  }
  if (offset + count > h->size) {
    nbdkit_error("tern: a write to %" PRIu64 " ends past the disk's size (%" PRIu64 ")",
                 offset + count, h->size);
    errno = ENOSPC;
    return -1;
  }
  if (offset > h->end && append(h, NULL, offset - h->end) == -1) return -1;
  return append(h, buf, count);
}

static int tern_pwrite(void *handle, const void *buf, uint32_t count, uint64_t offset,
                       uint32_t flags) {
  (void)flags;
  return write_at(handle, buf, count, offset);
}

static int tern_zero(void *handle, uint32_t count, uint64_t offset, uint32_t flags) {
  (void)flags;
  return write_at(handle, NULL, count, offset);
}

static int tern_trim(void *handle, uint32_t count, uint64_t offset, uint32_t flags) {
  (void)flags;
  return write_at(handle, NULL, count, offset);
}

static int tern_flush(void *handle, uint32_t flags) {
  (void)flags;
  struct handle *h = handle;
  if (h->committed || h->failed || h->end < h->size) return 0;
  return commit(h);
}

static struct nbdkit_plugin plugin = {
  .name = "tern",
  .longname = "tern deduplicating backup target",
  .version = "0.1.0",
  .description = "tern images as NBD exports: read (instant access) or write (backup)",
  .config = tern_config,
  .config_complete = tern_config_complete,
  .config_help =
    "server=HOST[:PORT]    (required) the ternd\n"
    "container=NAME       (required) the container (GROUP/NAME too)\n"
    "image=NAME           (required) the image\n"
    "mode=read|write      read a committed image (default) or write a new one\n"
    "size=BYTES           (mode=write) the disk's size\n"
    "resume=on            (mode=write) continue an image a client left incomplete\n"
    "user=NAME            the tern user (default TERN_USER, else admin)\n"
    "fingerprint=sha256:… the server's (default TERN_FINGERPRINT)\n"
    "readers=N            (mode=read) readers per connection, 1-64 (default 8)\n"
    "TERN_PASSWORD        (environment, required) the user's password",
  .thread_model = tern_thread_model,
  .after_fork = tern_after_fork,
  .unload = tern_unload,
  .open = tern_open,
  .close = tern_close,
  .get_size = tern_get_size,
  .can_write = tern_can_write,
  .can_flush = tern_can_flush,
  .can_trim = tern_can_trim,
  .can_zero = tern_can_zero,
  .can_multi_conn = tern_can_multi_conn,
  .pread = tern_pread,
  .pwrite = tern_pwrite,
  .zero = tern_zero,
  .trim = tern_trim,
  .flush = tern_flush,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN(plugin)
