/*
 * libioatd robustness (make test-c): what a new C user found, each as a check that failed before its
 * fix (issue 19). Some checks talk to a scripted fake server made here (a mute one, one that answers
 * HELLO and then goes quiet or away); the rest run a real ioatd of their own, which they kill and
 * restart.
 *
 *     robustness IOATD_BINARY
 *
 * Prints how many checks ran and failed; exits non-zero on any failure.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <ioatd/client.h>
#include <ioatd/ioat.h>

static int passed, failed;
#define CHECK(cond, ...)                                      \
    do {                                                      \
        if (cond) {                                           \
            passed++;                                         \
        } else {                                              \
            failed++;                                         \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                     \
            fprintf(stderr, "\n");                            \
        }                                                     \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int listener(const char *path) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    unlink(path);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 16) != 0) {
        perror("listener");
        exit(2);
    }
    return fd;
}

/* ---- a scripted fake server ---- */

enum script { MUTE_AFTER_HELLO, CLOSE_AFTER_SUBMIT, RESTART };

struct fake {
    int fd;
    enum script script;
    int accepted; /* the connection, for the test to close */
    /* RESTART: the features HELLO offered, RESYNCs answered, SUBMITs discarded before a RESYNC. */
    uint64_t offered;
    int resyncs, discarded;
};

static int fake_version = 2;

static void reply(int fd, uint16_t type, uint64_t id, const void *body, size_t length) {
    uint8_t buf[2048];
    struct ioatd_header h = {.magic = IOATD_MAGIC, .version = (uint16_t)fake_version, .type = type, .length = (uint32_t)(sizeof h + length), .request_id = id};
    memcpy(buf, &h, sizeof h);
    if (length) memcpy(buf + sizeof h, body, length);
    send(fd, buf, sizeof h + length, MSG_NOSIGNAL);
}

/* RESTART: what a server that crashed and came back does (SPEC.md §5.11): RESTARTED with LOST, then it
 * discards SUBMITs until the client's RESYNC. */
static void crash_and_return(int c, uint32_t restarts, int *awaiting_resync) {
    struct ioatd_restarted r = {.flags = IOATD_RESTARTED_LOST, .restarts = restarts};
    reply(c, IOATD_MSG_RESTARTED, 0, &r, sizeof r);
    *awaiting_resync = 1;
}

/* Speaks version 2 (no rings; RESTART: version 3 with feature bit 1): HELLO_OK with one channel,
 * OPEN_OK; then per script. */
static void *fake_server(void *arg) {
    struct fake *f = arg;
    int c = accept4(f->fd, NULL, NULL, SOCK_CLOEXEC);
    f->accepted = c;
    fake_version = f->script == RESTART ? 3 : 2;
    int submits = 0, awaiting_resync = 0;
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = recv(c, buf, sizeof buf, 0);
        if (n < (ssize_t)sizeof(struct ioatd_header)) break;
        struct ioatd_header h;
        memcpy(&h, buf, sizeof h);
        if (h.type == IOATD_MSG_HELLO) {
            struct {
                struct ioatd_hello_ok ok;
                struct ioatd_channel ch;
            } body;
            memset(&body, 0, sizeof body);
            struct ioatd_hello offer;
            memcpy(&offer, buf + sizeof h, sizeof offer);
            f->offered = offer.features;
            body.ok = (struct ioatd_hello_ok){.version = (uint16_t)fake_version, .channel_count = 1, .max_message = 65536, .max_descriptors = 64,
                                              .max_queue_depth = 64, .max_queues = 4, .max_buffers = 4, .max_buffer_bytes = 1 << 20,
                                              .features = f->script == RESTART ? IOATD_FEATURE_RESTART : 0};
            body.ch.max_depth = 64;
            body.ch.max_transfer = 1 << 20;
            reply(c, IOATD_MSG_HELLO_OK, h.request_id, &body, sizeof body);
        } else if (f->script == RESTART && h.type == IOATD_MSG_OPEN) {
            struct ioatd_open_ok ok = {.queue = 7, .channel = 0, .depth = 8};
            reply(c, IOATD_MSG_OPEN_OK, h.request_id, &ok, sizeof ok);
        } else if (f->script == RESTART && h.type == IOATD_MSG_SUBMIT) {
            if (awaiting_resync) {
                f->discarded++;
                continue;
            }
            /* The first SUBMIT is in flight when the server "crashes"; later ones complete. */
            if (submits++ == 0) {
                crash_and_return(c, 1, &awaiting_resync);
                continue;
            }
            struct ioatd_submit sub;
            memcpy(&sub, buf + sizeof h, sizeof sub);
            uint8_t out[sizeof(struct ioatd_completion) + 8 * sizeof(struct ioatd_completion_record)];
            struct ioatd_completion head = {.queue = sub.queue, .count = sub.count};
            memcpy(out, &head, sizeof head);
            for (uint32_t i = 0; i < sub.count && i < 8; i++) {
                struct ioatd_desc d;
                memcpy(&d, buf + sizeof h + sizeof sub + i * sizeof d, sizeof d);
                struct ioatd_completion_record rec = {.cookie = d.cookie, .status = IOATD_ST_SUCCESS, .opcode = d.opcode};
                memcpy(out + sizeof head + i * sizeof rec, &rec, sizeof rec);
            }
            reply(c, IOATD_MSG_COMPLETION, 0, out, sizeof head + sub.count * sizeof(struct ioatd_completion_record));
        } else if (f->script == RESTART && h.type == IOATD_MSG_CLOSE) {
            reply(c, IOATD_MSG_CLOSE_OK, h.request_id, NULL, 0);
        } else if (f->script == RESTART && h.type == IOATD_MSG_STATUS) {
            crash_and_return(c, 2, &awaiting_resync); /* a control request the crashed instance never answers */
        } else if (f->script == RESTART && h.type == IOATD_MSG_RESYNC) {
            awaiting_resync = 0;
            f->resyncs++;
            uint8_t zeros[8] = {0};
            reply(c, IOATD_MSG_RESYNC_OK, h.request_id, zeros, sizeof zeros);
        } else if (h.type == IOATD_MSG_OPEN && f->script == CLOSE_AFTER_SUBMIT) {
            struct ioatd_open_ok ok = {.queue = 7, .channel = 0, .depth = 8};
            reply(c, IOATD_MSG_OPEN_OK, h.request_id, &ok, sizeof ok);
        } else if (h.type == IOATD_MSG_SUBMIT && f->script == CLOSE_AFTER_SUBMIT) {
            break; /* the server dies with the ops in flight */
        }
        /* MUTE_AFTER_HELLO: every other request goes unanswered. */
    }
    if (f->script == CLOSE_AFTER_SUBMIT) close(c);
    return NULL;
}

static void mute_socket(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/ioatd-mute-%d.sock", getpid());
    int fd = listener(path); /* takes connections into its backlog, never answers */
    struct ioatd_client *c = NULL;
    double start = now_s();
    int rc = ioatd_connect_timeout(path, 0, 300, &c);
    double took = now_s() - start;
    const char *text = ioatd_strerror(NULL, rc);
    CHECK(rc == -ETIMEDOUT && c == NULL, "mute socket: connect gave %d (%s)", rc, text);
    CHECK(took >= 0.25 && took < 5, "mute socket: connect gave up after %.2f s, bound 0.3 s", took);
    CHECK(strstr(text, path) && strstr(text, "HELLO") && strstr(text, "journalctl -u ioatd") && strstr(text, "300 ms"),
          "mute socket: the text names the socket, what was awaited, the bound and the log: %s", text);
    /* The default bound comes from the environment. */
    setenv("IOATD_CONNECT_TIMEOUT_MS", "200", 1);
    start = now_s();
    rc = ioatd_connect(path, 0, &c);
    took = now_s() - start;
    unsetenv("IOATD_CONNECT_TIMEOUT_MS");
    CHECK(rc == -ETIMEDOUT && took < 5, "IOATD_CONNECT_TIMEOUT_MS=200: %d after %.2f s", rc, took);
    close(fd);
    unlink(path);
}

static void connect_texts(void) {
    struct ioatd_client *c = NULL;
    int rc = ioatd_connect("/tmp/ioatd-no-such-dir/x.sock", 0, &c);
    const char *text = ioatd_strerror(NULL, rc);
    CHECK(rc == -ENOENT && strstr(text, "/tmp/ioatd-no-such-dir/x.sock"), "ENOENT names the path: %s", text);
    setenv("IOATD_SOCKET", "/tmp/ioatd-no-such-dir/default.sock", 1);
    rc = ioatd_connect(NULL, 0, &c);
    text = ioatd_strerror(NULL, rc);
    CHECK(rc == -ENOENT && strstr(text, "default.sock"), "the default path it tried is named: %s", text);
    unsetenv("IOATD_SOCKET");
    CHECK(strcmp(ioatd_strerror(NULL, 5), strerror(5)) == 0, "positive errno: %s", ioatd_strerror(NULL, 5));
    CHECK(strcmp(ioatd_strerror(NULL, -EAGAIN), strerror(EAGAIN)) == 0, "-EAGAIN: %s", ioatd_strerror(NULL, -EAGAIN));

    /* A server of another uid is refused by the client itself: -EPERM with that uid, not a server's
     * PERMISSION_DENIED. */
    char path[64];
    snprintf(path, sizeof path, "/tmp/ioatd-other-%d.sock", getpid());
    int ready[2];
    if (getuid() != 0 || pipe(ready) != 0) return;
    pid_t child = fork();
    if (child == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
        int fd = listener(path);
        char one = 1;
        if (write(ready[1], &one, 1) != 1) _exit(2);
        pause();
        close(fd);
        _exit(0);
    }
    char one;
    if (read(ready[0], &one, 1) == 1) {
        rc = ioatd_connect(path, 0, &c);
        text = ioatd_strerror(NULL, rc);
        CHECK(rc == -EPERM && strstr(text, "uid 65534") && strstr(text, path), "untrusted server: %d %s", rc, text);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    close(ready[0]);
    close(ready[1]);
    unlink(path);
}

static void call_timeout_and_loss(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/ioatd-fake-%d.sock", getpid());
    struct fake f = {.fd = listener(path), .script = MUTE_AFTER_HELLO, .accepted = -1};
    pthread_t t;
    pthread_create(&t, NULL, fake_server, &f);
    struct ioatd_client *c = NULL;
    int rc = ioatd_connect_timeout(path, 0, 5000, &c);
    CHECK(rc == 0, "fake server: connect %d %s", rc, ioatd_strerror(NULL, rc));
    if (rc == 0) {
        CHECK(ioatd_set_call_timeout(c, 300) == 0 && ioatd_set_call_timeout(c, -7) == -EINVAL, "set_call_timeout");
        void *p = NULL;
        double start = now_s();
        rc = ioatd_buffer_alloc(c, 4096, 0, &p);
        double took = now_s() - start;
        const char *text = ioatd_strerror(c, rc);
        CHECK(rc == -ETIMEDOUT && took < 5, "a mute server's ALLOC: %d after %.2f s", rc, took);
        CHECK(strstr(text, "ALLOC") && strstr(text, path) && strstr(text, "journalctl"), "ALLOC's timeout text: %s", text);
        CHECK(ioatd_client_error(c) == 0, "a timed-out call leaves the connection up");
        ioatd_close(c);
    }
    shutdown(f.accepted, SHUT_RDWR);
    pthread_join(t, NULL);
    close(f.accepted);

    /* A server that dies with ops in flight: each gets CONNECTION_LOST, in order, then the end. */
    f.script = CLOSE_AFTER_SUBMIT;
    pthread_create(&t, NULL, fake_server, &f);
    rc = ioatd_connect_timeout(path, 0, 5000, &c);
    CHECK(rc == 0, "fake server 2: connect %d", rc);
    if (rc == 0) {
        struct ioatd_queue *q;
        rc = ioatd_queue_open(c, 0, 8, &q);
        CHECK(rc == 0, "fake open %d", rc);
        if (rc == 0) {
            for (int i = 0; i < 3; i++) {
                struct ioatd_desc *d = ioatd_get_desc(q);
                ioatd_prep_null(q, d, 0);
                ioatd_desc_set_cookie(d, 100 + i);
            }
            CHECK(ioatd_submit(q) == 3, "submit 3");
            for (int i = 0; i < 3; i++) {
                struct ioatd_completion_record *r = NULL;
                rc = ioatd_wait_completion(q, &r, 5000);
                CHECK(rc == 0 && r->status == IOATD_ST_CONNECTION_LOST && r->cookie == (uint64_t)(100 + i),
                      "op %d after the server died: rc %d status %s cookie %llu", i, rc, rc == 0 ? ioatd_status_name(r->status) : "-",
                      rc == 0 ? (unsigned long long)r->cookie : 0ull);
                if (rc == 0) ioatd_completion_seen(q, r);
            }
            struct ioatd_completion_record *r;
            rc = ioatd_wait_completion(q, &r, 5000);
            CHECK(rc == -ECONNRESET, "then the connection's end: %d", rc);
            CHECK(ioatd_client_error(c) == -ECONNRESET, "ioatd_client_error %d", ioatd_client_error(c));
            CHECK(ioatd_get_desc(q) == NULL, "no descriptor after the end");
            CHECK(strcmp(ioatd_status_name(IOATD_ST_CONNECTION_LOST), "CONNECTION_LOST") == 0, "status name");
            CHECK(ioatd_queue_close(q) == 0, "queue_close after the end frees this side");
        }
        ioatd_close(c);
    }
    pthread_join(t, NULL);
    close(f.fd);
    unlink(path);
}

/* A server that crashes and comes back (SPEC.md §5.11): ops in flight complete RESTARTED in order, with
 * their cookies; a call caught in it ends with -ECONNABORTED; the connection carries on. */
static void restart_lost(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/ioatd-restart-%d.sock", getpid());
    struct fake f = {.fd = listener(path), .script = RESTART, .accepted = -1};
    pthread_t t;
    pthread_create(&t, NULL, fake_server, &f);
    struct ioatd_client *c = NULL;
    int rc = ioatd_connect_timeout(path, 0, 5000, &c);
    CHECK(rc == 0, "restarting server: connect %d %s", rc, ioatd_strerror(NULL, rc));
    if (rc == 0) {
        CHECK(f.offered & IOATD_FEATURE_RESTART, "HELLO offers feature bit 1 (0x%llx)", (unsigned long long)f.offered);
        CHECK(ioatd_server_restarts(c, NULL) == 0, "no restart yet");
        struct ioatd_queue *q;
        rc = ioatd_queue_open(c, 0, 8, &q);
        CHECK(rc == 0, "open %d", rc);
        if (rc == 0) {
            for (int i = 0; i < 3; i++) {
                struct ioatd_desc *d = ioatd_get_desc(q);
                ioatd_prep_null(q, d, 0);
                ioatd_desc_set_cookie(d, 100 + i);
            }
            CHECK(ioatd_submit(q) == 3, "submit 3");
            for (int i = 0; i < 3; i++) {
                struct ioatd_completion_record *r = NULL;
                rc = ioatd_wait_completion(q, &r, 5000);
                CHECK(rc == 0 && r->status == IOATD_ST_RESTARTED && r->cookie == (uint64_t)(100 + i),
                      "op %d in flight at the crash: rc %d status %s cookie %llu", i, rc, rc == 0 ? ioatd_status_name(r->status) : "-",
                      rc == 0 ? (unsigned long long)r->cookie : 0ull);
                if (rc == 0) ioatd_completion_seen(q, r);
            }
            CHECK(strcmp(ioatd_status_name(IOATD_ST_RESTARTED), "RESTARTED") == 0, "status name RESTARTED");
            /* The connection carries on: the next ops complete normally, on the same queue. */
            for (int i = 0; i < 2; i++) {
                struct ioatd_desc *d = ioatd_get_desc(q);
                ioatd_prep_null(q, d, 0);
                ioatd_desc_set_cookie(d, 200 + i);
            }
            CHECK(ioatd_submit(q) == 2, "submit 2 after the restart");
            for (int i = 0; i < 2; i++) {
                struct ioatd_completion_record *r = NULL;
                rc = ioatd_wait_completion(q, &r, 5000);
                CHECK(rc == 0 && r->status == IOATD_ST_SUCCESS && r->cookie == (uint64_t)(200 + i),
                      "op %d after the restart: rc %d status %s", i, rc, rc == 0 ? ioatd_status_name(r->status) : "-");
                if (rc == 0) ioatd_completion_seen(q, r);
            }
            /* A control call the crashed instance took and never answered ends once RESYNC is answered. */
            char *json = NULL;
            double start = now_s();
            rc = ioatd_status(c, &json);
            const char *text = ioatd_strerror(c, rc);
            CHECK(rc == -ECONNABORTED && now_s() - start < 5 && strstr(text, "restarted") && strstr(text, "STATUS"),
                  "STATUS caught in a crash: %d after %.2f s (%s)", rc, now_s() - start, text);
            free(json);
            uint32_t crashes = 0;
            CHECK(ioatd_server_restarts(c, &crashes) == 2 && crashes == 2, "two restarts, both crashes (%u)", crashes);
            CHECK(f.resyncs == 2 && f.discarded == 0, "RESYNC after each crash (%d), nothing sent before it (%d)", f.resyncs, f.discarded);
            CHECK(ioatd_client_error(c) == 0, "the connection is up");
            CHECK(ioatd_queue_close(q) == 0, "queue_close");
        }
        ioatd_close(c);
    }
    shutdown(f.accepted, SHUT_RDWR);
    pthread_join(t, NULL);
    close(f.accepted);
    close(f.fd);
    unlink(path);
}

static void null_arguments(void) {
    /* One rule: -EINVAL, NULL, 0 or nothing; never a crash. */
    struct ioatd_desc d;
    struct ioatd_completion_record *r;
    struct ioatd_hello_ok ok;
    uint32_t h;
    uint64_t o;
    void *p;
    CHECK(ioatd_connect("/x", 0, NULL) == -EINVAL, "connect NULL out");
    struct ioatd_client *none = NULL;
    CHECK(ioatd_connect_timeout("/x", 0, -3, &none) == -EINVAL && none == NULL, "connect with a bound below -2");
    CHECK(ioatd_connect_timeout("/x", 0x80, 1000, &none) == -EINVAL, "connect with an unknown flag");
    CHECK(ioatd_get_desc(NULL) == NULL, "get_desc");
    CHECK(ioatd_submit(NULL) == -EINVAL, "submit");
    CHECK(ioatd_queue_close(NULL) == -EINVAL, "queue_close");
    CHECK(ioatd_ref(NULL, &d, 1, &h, &o) == -EINVAL, "ref");
    ioatd_server_limits(NULL, &ok);
    CHECK(ioatd_buffer_alloc(NULL, 4096, 0, &p) == -EINVAL, "buffer_alloc");
    CHECK(ioatd_buffer_free(NULL, &d) == -EINVAL, "buffer_free");
    CHECK(ioatd_queue_open(NULL, 0, 8, NULL) == -EINVAL, "queue_open");
    CHECK(ioatd_wait_completion(NULL, &r, 0) == -EINVAL, "wait");
    CHECK(ioatd_peek_completion(NULL, &r) == -EINVAL, "peek");
    CHECK(ioatd_prep_copy(NULL, &d, &d, &d, 1, 0) == -EINVAL, "prep");
    CHECK(ioatd_status(NULL, NULL) == -EINVAL, "status");
    CHECK(ioatd_client_fd(NULL) == -EINVAL && ioatd_queue_depth(NULL) == 0, "fd, depth");
    ioatd_cq_advance(NULL, 1);
    ioatd_completion_seen(NULL, NULL);
    ioatd_desc_set_cookie(NULL, 1);
    ioatd_close(NULL);
    CHECK(ioat_copy(NULL, 0, 0, 1, NULL, NULL, 0) == NULL && ioat_null(NULL, NULL, NULL, 0) == NULL, "ioat ops");
    CHECK(ioat_poll(NULL, 0) == -EINVAL && ioat_get_fd(NULL) == -EINVAL, "ioat_poll, get_fd");
    CHECK(ioat_acquire_reserve(NULL, 1, M_NOWAIT) == EINVAL && ioat_set_interrupt_coalesce(NULL, 1) == EINVAL, "reserve, coalesce");
    CHECK(ioat_get_hwversion(NULL) == 0 && ioat_get_max_io_size(NULL) == 0 && ioat_get_depth(NULL) == 0, "ioat getters");
    ioat_acquire(NULL);
    ioat_release(NULL);
    ioat_put_dmaengine(NULL);
    /* Helpers as functions, for other languages. */
    CHECK(ioatd_err(IOATD_E_BAD_HANDLE) == IOATD_ERR(IOATD_E_BAD_HANDLE) && ioatd_err_code(ioatd_err(13)) == 13, "err helpers");
    ioatd_desc_set_data(&d, &d);
    struct ioatd_completion_record rec = {.cookie = d.cookie};
    CHECK(ioatd_record_data(&rec) == &d, "cookie as a pointer");
}

/* ---- against a real ioatd of this program's own ---- */

static const char *ioatd_binary;
static char server_path[64];
static pid_t server_pid;

static void start_server(void) {
    unlink(server_path);
    server_pid = fork();
    if (server_pid == 0) {
        int null = open("/dev/null", 1);
        dup2(null, 1);
        dup2(null, 2);
        execl(ioatd_binary, "ioatd", "--socket", server_path, "--engine", "cpu", "--no-hugepages", "--log-level", "error", (char *)NULL);
        _exit(127);
    }
    /* Wait for the condition (a server that answers HELLO), not for a guessed time. */
    for (int i = 0; i < 600; i++) {
        struct ioatd_client *c;
        if (ioatd_connect_timeout(server_path, 0, 1000, &c) == 0) {
            ioatd_close(c);
            return;
        }
        poll(NULL, 0, 20);
    }
    fprintf(stderr, "robustness: ioatd did not start at %s\n", server_path);
    exit(2);
}

static void kill_server(void) {
    kill(server_pid, SIGKILL);
    waitpid(server_pid, NULL, 0);
}

static void ring_loss(void) {
    struct ioatd_client *c;
    int rc = ioatd_connect(server_path, 0, &c);
    CHECK(rc == 0 && ioatd_rings_granted(c), "ring connect %d", rc);
    if (rc != 0) return;
    struct ioatd_client *plain;
    if (ioatd_connect(server_path, IOATD_CONNECT_NO_RINGS, &plain) == 0) {
        CHECK(ioatd_rings_granted(plain) == 0, "rings_granted on a NO_RINGS client");
        ioatd_close(plain);
    }
    struct ioatd_queue *q;
    uint8_t *src, *dst;
    const uint64_t big = 16u << 20;
    rc = ioatd_queue_open(c, IOATD_ANY_CHANNEL, 64, &q);
    if (rc == 0) rc = ioatd_buffer_alloc(c, big, 0, (void **)&src);
    if (rc == 0) rc = ioatd_buffer_alloc(c, big * 4, 0, (void **)&dst);
    CHECK(rc == 0 && ioatd_queue_is_ring(q), "ring queue and buffers: %s", ioatd_strerror(c, rc));
    if (rc != 0) return;
    struct ioatd_completion_record *r;
    CHECK(ioatd_wait_completion(q, &r, -1) == -EAGAIN, "waiting on an idle ring queue returns -EAGAIN at once");
    /* A refused ring entry: its record, and the server's text through ioatd_strerror. */
    struct ioatd_desc *d = ioatd_get_desc(q);
    ioatd_prep_copy(q, d, dst, src, 64, 0);
    d->src_handle = 0xBAD;
    ioatd_submit(q);
    rc = ioatd_wait_completion(q, &r, 5000);
    CHECK(rc == 0 && r->status == IOATD_STATUS_REFUSED + IOATD_E_BAD_HANDLE, "refused ring entry: %d", rc);
    const char *text = ioatd_strerror(c, IOATD_ERR(IOATD_E_BAD_HANDLE));
    CHECK(strstr(text, "2989") != NULL, "the ring refusal keeps the server's text (handle 0xBAD = 2989): %s", text);
    if (rc == 0) ioatd_completion_seen(q, r);
    /* Long ops in flight, then kill -9: each gets a record, done or CONNECTION_LOST, in order. */
    int n = 0;
    for (; n < 40; n++) {
        d = ioatd_get_desc(q);
        ioatd_prep_copy(q, d, dst + (n % 4) * big, src, big, 0);
        ioatd_desc_set_cookie(d, 1000 + n);
    }
    ioatd_submit(q);
    kill_server();
    int lost = 0, in_order = 1;
    for (int i = 0; i < n; i++) {
        rc = ioatd_wait_completion(q, &r, 5000);
        if (rc != 0) break;
        in_order &= r->cookie == (uint64_t)(1000 + i);
        lost += r->status == IOATD_ST_CONNECTION_LOST;
        ioatd_completion_seen(q, r);
        if (i + 1 == n) rc = 1;
    }
    CHECK(rc == 1 && in_order && lost > 0, "after kill -9: %d records in order, %d CONNECTION_LOST (rc %d)", n, lost, rc);
    rc = ioatd_wait_completion(q, &r, 5000);
    CHECK(rc == -ECONNRESET, "then -ECONNRESET: %d", rc);
    /* The queue's own counts: 1 refused + 40 copies, `lost` of them lost. */
    struct ioatd_queue_stats st;
    CHECK(ioatd_queue_stats(q, &st) == 0 && st.submitted == 41 && st.completed == 41 && st.refused == 1 &&
              st.lost == (uint64_t)lost && st.failed == 1 + (uint64_t)lost && st.in_flight == 0 && st.depth == 64,
          "stats: submitted %llu completed %llu failed %llu refused %llu lost %llu in flight %u", (unsigned long long)st.submitted,
          (unsigned long long)st.completed, (unsigned long long)st.failed, (unsigned long long)st.refused,
          (unsigned long long)st.lost, st.in_flight);
    CHECK(ioatd_queue_stats(NULL, &st) == -EINVAL, "stats of NULL");
    CHECK(ioatd_queue_close(q) == 0 && ioatd_buffer_free(c, src) == 0, "close and free after the end");
    ioatd_close(c);
    start_server();
}

/* Every thread of `pid` onto `cpus` (the server's event loop, workers and setup threads alike). */
static void pin_process(pid_t pid, const cpu_set_t *cpus) {
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') sched_setaffinity(atoi(e->d_name), sizeof *cpus, cpus);
    closedir(d);
}

static void socket_spin(void) {
    /* The socket spin sees the record when it comes, not when the spin ends. With the client and the
     * server on one CPU (a small machine, or both pinned), a spin that never yields kept the server
     * from running until it ended: p50 = spin + 13 µs. */
    cpu_set_t one, all, mine;
    sched_getaffinity(0, sizeof mine, &mine);
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    CPU_ZERO(&all);
    for (int i = 0; i < CPU_SETSIZE; i++) CPU_SET(i, &all);
    pin_process(server_pid, &one);
    sched_setaffinity(0, sizeof one, &one);
    struct ioatd_client *c;
    if (ioatd_connect(server_path, IOATD_CONNECT_NO_RINGS, &c) != 0) return;
    struct ioatd_queue *q;
    if (ioatd_queue_open(c, IOATD_ANY_CHANNEL, 4, &q) == 0) {
        /* 100 QD1 ops with no spin (the waiter sleeps at once), then with a 2 ms spin: shorter than a
         * scheduler time slice, so a spin that never yields holds the CPU for all of it. The spin may
         * cost nothing, and must not cost its length: a bound of half the spins' total, over the
         * no-spin run of the same moment. */
        /* A spin that hides the record costs every op its whole spin, every time; one that yields can
         * still lose the CPU to a busy machine now and then, so the best of three spin rounds counts. */
        double took[2] = {0, 1e9};
        int ok = 1;
        const int ops = 100;
        const uint32_t spin_us = 2000;
        for (int round = 0; round < 4 && ok; round++) {
            ioatd_queue_set_spin(q, round == 0 ? 0 : spin_us);
            double start = now_s();
            for (int i = 0; i < ops && ok; i++) {
                struct ioatd_desc *d = ioatd_get_desc(q);
                ioatd_prep_null(q, d, IOATD_F_INT_EN);
                struct ioatd_completion_record *r;
                ok = ioatd_submit(q) == 1 && ioatd_wait_completion(q, &r, 5000) == 0;
                if (ok) ioatd_completion_seen(q, r);
            }
            double t = now_s() - start;
            if (round == 0) took[0] = t;
            else if (t < took[1]) took[1] = t;
        }
        if (getenv("ROBUSTNESS_VERBOSE")) fprintf(stderr, "socket spin: %.4f s without, %.4f s with\n", took[0], took[1]);
        CHECK(ok && took[1] < took[0] + ops * spin_us / 2e6,
              "%d QD1 ops, client and server on one CPU: %.4f s with a %u us spin, %.4f s without (a spin that hides the record adds %d x %u us)",
              ops, took[1], spin_us, took[0], ops, spin_us);
        ioatd_queue_close(q);
    }
    ioatd_close(c);
    sched_setaffinity(0, sizeof mine, &mine);
    pin_process(server_pid, &all);
}

/* ---- the ioat(4) layer ---- */

struct counts {
    pthread_mutex_t mu;
    int calls[4096];
    int errors;
    int order_breaks;
    int last;
};

static void count_callback(void *arg, int error) {
    struct counts *k = arg;
    (void)k;
    (void)error;
}

struct tagged {
    struct counts *k;
    int index;
};

static void tagged_callback(void *arg, int error) {
    struct tagged *t = arg;
    pthread_mutex_lock(&t->k->mu);
    t->k->calls[t->index]++;
    if (error) t->k->errors++;
    if (t->index < t->k->last) t->k->order_breaks++;
    t->k->last = t->index;
    pthread_mutex_unlock(&t->k->mu);
}

struct poller {
    bus_dmaengine_t e;
    int *stop;
};

static void *poll_loop(void *arg) {
    struct poller *p = arg;
    while (!__atomic_load_n(p->stop, __ATOMIC_ACQUIRE)) ioat_poll(p->e, 0);
    return NULL;
}

static void ioat_pollers(int threads) {
    bus_dmaengine_t e = ioat_get_dmaengine(0);
    CHECK(e != NULL, "engine: %s", ioatd_strerror(NULL, -errno));
    if (!e) return;
    uint8_t *src, *dst;
    const int ops = 2000, size = 256;
    if (ioatd_buffer_alloc(ioat_client(), (uint64_t)ops * size, 0, (void **)&src) != 0 ||
        ioatd_buffer_alloc(ioat_client(), (uint64_t)ops * size, 0, (void **)&dst) != 0) {
        CHECK(0, "buffers");
        return;
    }
    for (int i = 0; i < ops * size; i++) src[i] = (uint8_t)(i * 7 + threads);
    memset(dst, 0, (size_t)ops * size);
    static struct counts k;
    memset(&k, 0, sizeof k);
    k.last = -1;
    pthread_mutex_init(&k.mu, NULL);
    static struct tagged tags[4096];
    int stop = 0;
    struct poller p = {e, &stop};
    pthread_t t[4];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, poll_loop, &p);
    for (int i = 0; i < ops; i += 16) {
        ioat_acquire(e);
        for (int j = i; j < i + 16 && j < ops; j++) {
            tags[j] = (struct tagged){&k, j};
            if (!ioat_copy(e, (bus_addr_t)(uintptr_t)(dst + j * size), (bus_addr_t)(uintptr_t)(src + j * size), size,
                           tagged_callback, &tags[j], 0))
                CHECK(0, "copy %d refused", j);
        }
        ioat_release(e);
    }
    /* Wait for the condition: every callback ran (bounded). */
    double until = now_s() + 20;
    for (;;) {
        pthread_mutex_lock(&k.mu);
        int seen = 0;
        for (int i = 0; i < ops; i++) seen += k.calls[i] != 0;
        pthread_mutex_unlock(&k.mu);
        if (seen == ops || now_s() > until) break;
        ioat_poll(e, 10);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    int missing = 0, twice = 0;
    for (int i = 0; i < ops; i++) {
        missing += k.calls[i] == 0;
        twice += k.calls[i] > 1;
    }
    CHECK(missing == 0 && twice == 0 && k.errors == 0 && k.order_breaks == 0,
          "%d pollers: %d callbacks missing, %d twice, %d errors, %d out of order", threads, missing, twice, k.errors, k.order_breaks);
    CHECK(memcmp(src, dst, (size_t)ops * size) == 0, "%d pollers: the bytes arrived", threads);
    ioatd_buffer_free(ioat_client(), src);
    ioatd_buffer_free(ioat_client(), dst);
    ioat_put_dmaengine(e);
}

static void *alloc_loop(void *arg) {
    int *done = arg; /* read after pthread_join */
    for (int i = 0; i < 50; i++) {
        void *p;
        if (ioatd_buffer_alloc(ioat_client(), 8192, 0, &p) != 0 || ioatd_buffer_free(ioat_client(), p) != 0) return NULL;
    }
    *done = 1;
    return NULL;
}

static int called_inside;
static struct bus_dmadesc *inside_result = (struct bus_dmadesc *)1;
static bus_dmaengine_t inside_engine;

static void enqueue_from_callback(void *arg, int error) {
    (void)arg;
    (void)error;
    called_inside = 1;
    inside_result = ioat_null(inside_engine, NULL, NULL, 0);
}

static void ioat_layer(void) {
    CHECK(ioat_set_socket(server_path, 0) == 0, "ioat_set_socket before first use");
    ioat_pollers(2);
    ioat_pollers(4);

    bus_dmaengine_t e = ioat_get_dmaengine(0);
    CHECK(e && ioat_get_depth(e) > 0 && ioat_get_depth(e) <= 256, "depth %u", e ? ioat_get_depth(e) : 0);
    if (!e) return;
    int rc;
    CHECK(ioat_set_socket(server_path, 0) == -EBUSY, "ioat_set_socket while connected");
    /* Allocation beside a thread that polls and enqueues. */
    int done = 0;
    pthread_t t;
    pthread_create(&t, NULL, alloc_loop, &done);
    for (int i = 0; i < 200; i++) {
        ioat_acquire(e);
        ioat_null(e, count_callback, NULL, 0);
        ioat_release(e);
        ioat_poll(e, 5);
    }
    pthread_join(t, NULL);
    CHECK(done, "50 ALLOC/FREE beside the ioat(4) API finished");
    while (ioat_poll(e, 100) > 0) {}

    /* No acquire, or from a callback: refused. */
    CHECK(ioat_null(e, NULL, NULL, 0) == NULL, "an op without ioat_acquire is refused");
    inside_engine = e;
    ioat_acquire(e);
    ioat_null(e, enqueue_from_callback, NULL, DMA_INT_EN);
    ioat_release(e);
    /* ioat_get_fd is readable after a release without an ioat_poll first. */
    int fd = ioat_get_fd(e);
    ioat_acquire(e);
    ioat_null(e, count_callback, NULL, 0);
    ioat_release(e);
    struct pollfd p = {fd, POLLIN, 0};
    CHECK(fd >= 0 && poll(&p, 1, 5000) == 1, "ioat_get_fd polls readable after a release");
    while (ioat_poll(e, 100) > 0) {}
    CHECK(called_inside && inside_result == NULL, "an op from inside a callback is refused");

    /* A stopped server: waiting for room in a full engine, and M_WAITOK, give up within the client's
     * bound instead of hanging; once it runs again, every callback comes. */
    ioatd_set_call_timeout(ioat_client(), 300);
    kill(server_pid, SIGSTOP);
    ioat_acquire(e);
    int queued = 0;
    while (ioat_null(e, count_callback, NULL, DMA_NO_WAIT) != NULL) queued++;
    double t0 = now_s();
    struct bus_dmadesc *waited = ioat_null(e, count_callback, NULL, 0);
    double took = now_s() - t0;
    CHECK(queued == (int)ioat_get_depth(e) && waited == NULL && took >= 0.25 && took < 5,
          "a full engine on a stopped server: %d queued, the next op %s after %.2f s", queued, waited ? "enqueued" : "refused", took);
    ioat_release(e);
    t0 = now_s();
    rc = ioat_acquire_reserve(e, 1, M_WAITOK);
    took = now_s() - t0;
    CHECK(rc == ETIMEDOUT && took < 5, "M_WAITOK on a stopped server: %d after %.2f s", rc, took);
    if (rc == 0) ioat_release(e);
    kill(server_pid, SIGCONT);
    int ran = 0;
    for (int n; (n = ioat_poll(e, 2000)) > 0;) ran += n;
    CHECK(ran == queued, "after SIGCONT, %d of %d callbacks", ran, queued);
    ioatd_set_call_timeout(ioat_client(), 30000);

    /* kill -9 and a restart: outstanding callbacks hear ENXIO, then a new engine works. */
    kill_server();
    rc = ioat_poll(e, 5000);
    CHECK(rc == -ENXIO, "ioat_poll after the server died: %d", rc);
    ioat_acquire(e);
    CHECK(ioat_null(e, NULL, NULL, 0) == NULL, "an op after the connection's end returns NULL");
    ioat_release(e);
    ioat_put_dmaengine(e);
    start_server();
    e = ioat_get_dmaengine(0);
    CHECK(e != NULL, "ioat_get_dmaengine connects again after a restart");
    if (e) {
        ioat_acquire(e);
        CHECK(ioat_null(e, count_callback, NULL, 0) != NULL, "an op on the new engine");
        ioat_release(e);
        CHECK(ioat_poll(e, 5000) == 1, "its callback");
        ioat_put_dmaengine(e);
    }
    ioat_shutdown();
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: robustness IOATD_BINARY\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    ioatd_binary = argv[1];
    snprintf(server_path, sizeof server_path, "/tmp/ioatd-robust-%d.sock", getpid());
    mute_socket();
    connect_texts();
    call_timeout_and_loss();
    restart_lost();
    null_arguments();
    start_server();
    ring_loss();
    socket_spin();
    ioat_layer();
    kill_server();
    unlink(server_path);
    printf("robustness: %d checks, %d failing\n", passed + failed, failed);
    return failed ? 1 : 0;
}
