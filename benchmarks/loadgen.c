/*
 * loadgen: a closed-loop HTTP/1.1 load generator, bench_http's fallback where wrk is missing.
 *
 *     cc -O2 -Wall -Wextra -pthread -o loadgen loadgen.c
 *     loadgen [-t THREADS] [-c CONNECTIONS] [-d SECONDS] [-r] HOST PORT REQUESTS
 *
 * REQUESTS is a file of one request per line, "METHOD<TAB>PATH<TAB>BODY" (the body may be
 * empty). Each connection keeps one request in flight on a keep-alive connection, as wrk does,
 * and sends the next one as soon as the last response is whole: the next line in turn (each
 * thread its own turn), or with -r a line at random. Prints, one per line: requests, seconds,
 * rps, p50_ms, p99_ms, non2xx, errors. Latency runs from the first byte sent to the last byte
 * of the response read, in 1 µs buckets up to 1 s.
 *
 * Responses must carry Content-Length (fastactor's and the trivial server's all do); one that
 * does not, a connection the server closes, and a socket error count as errors, and the
 * connection is opened again.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HIST_US 1000000u   /* latency buckets: 1 µs each, up to 1 s (the last: 1 s or more) */
#define BUF_SIZE 65536
#define MAX_EVENTS 256

typedef struct {
    char *data;
    size_t len;
} request;

typedef struct {
    int fd;
    int connected;
    const request *req;
    size_t sent;
    uint64_t t0;
    size_t have;
    char buf[BUF_SIZE];
} conn;

typedef struct {
    pthread_t th;
    int ep;
    int nconns;
    conn *conns;
    uint64_t rng;
    uint64_t turn;
    uint64_t done, non2xx, errors;
    uint32_t *hist;
    int failed;                  /* a system call the run can not go on without failed */
} worker;

static request *reqs;
static size_t nreqs;
static int pick_random;
static struct sockaddr_in addr;
static atomic_int stopping;

static uint64_t
now_ns(void)
{
    struct timespec t;
    if (clock_gettime(CLOCK_MONOTONIC, &t) != 0)
        return 0;
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static const request *
next_request(worker *w)
{
    if (!pick_random)
        return &reqs[w->turn++ % nreqs];
    w->rng ^= w->rng << 13;          /* xorshift64 */
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return &reqs[w->rng % nreqs];
}

static void
close_conn(conn *c)
{
    if (c->fd >= 0) {
        /* Closing also takes the descriptor out of the epoll set; close errors lose nothing. */
        (void)close(c->fd);
        c->fd = -1;
    }
}

/* Opens C's socket and starts connecting; -1 if the system refuses a socket. */
static int
open_conn(worker *w, conn *c)
{
    struct epoll_event ev;
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        close_conn(c);
        return -1;
    }
    c->connected = 0;
    c->have = 0;
    c->req = NULL;
    if (connect(c->fd, (const struct sockaddr *)&addr, sizeof(addr)) != 0 &&
        errno != EINPROGRESS) {
        close_conn(c);
        return -1;
    }
    ev.events = EPOLLOUT | EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        close_conn(c);
        return -1;
    }
    return 0;
}

/* Writes what is left of C's request; 0 when all of it is sent, 1 when the socket is full
 * (EPOLLOUT then tells when to go on), -1 on an error. */
static int
send_rest(worker *w, conn *c)
{
    while (c->sent < c->req->len) {
        ssize_t n = write(c->fd, c->req->data + c->sent, c->req->len - c->sent);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                return epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0 ? 1 : -1;
            }
            return -1;
        }
        c->sent += (size_t)n;
    }
    return 0;
}

static int
start_request(worker *w, conn *c)
{
    c->req = next_request(w);
    c->sent = 0;
    c->have = 0;
    c->t0 = now_ns();
    return send_rest(w, c) < 0 ? -1 : 0;
}

/* The length of a whole response at the start of BUF (header and body), 0 if more is needed,
 * -1 if it is not one this client reads (no Content-Length, a header block past BUF_SIZE). */
static long
response_length(const char *buf, size_t have, int *status)
{
    const char *end = memmem(buf, have, "\r\n\r\n", 4);
    const char *p;
    long body = -1;
    if (end == NULL)
        return have >= BUF_SIZE ? -1 : 0;
    if (have < 12 || memcmp(buf, "HTTP/1.", 7) != 0)
        return -1;
    *status = atoi(buf + 9);
    for (p = memchr(buf, '\n', (size_t)(end - buf)); p != NULL && p < end;
         p = memchr(p + 1, '\n', (size_t)(end - p - 1))) {
        if ((size_t)(end - p) > 15 && strncasecmp(p + 1, "content-length:", 15) == 0)
            body = atol(p + 16);
    }
    if (body < 0 || (size_t)body > BUF_SIZE)
        return -1;
    return (long)(end - buf) + 4 + body;
}

/* Reads what C has; on a whole response, counts it and sends the next request. */
static int
on_readable(worker *w, conn *c)
{
    for (;;) {
        int status = 0;
        long whole;
        ssize_t n = read(c->fd, c->buf + c->have, BUF_SIZE - c->have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            return 0;
        if (n <= 0)
            return -1;                  /* closed by the server, or an error */
        c->have += (size_t)n;
        whole = response_length(c->buf, c->have, &status);
        if (whole < 0)
            return -1;
        if (whole == 0 || c->have < (size_t)whole)
            continue;
        if (c->req == NULL || c->sent < c->req->len || c->have != (size_t)whole)
            return -1;                  /* a response nobody asked for */
        if (!atomic_load_explicit(&stopping, memory_order_relaxed)) {
            uint64_t us = (now_ns() - c->t0) / 1000u;
            w->hist[us < HIST_US ? us : HIST_US - 1]++;
            w->done++;
            if (status < 200 || status > 399)
                w->non2xx++;
        }
        return start_request(w, c);
    }
}

static void
reopen(worker *w, conn *c)
{
    close_conn(c);
    if (atomic_load_explicit(&stopping, memory_order_relaxed))
        return;
    w->errors++;
    if (open_conn(w, c) != 0)
        w->failed = 1;
}

static void *
run_worker(void *arg)
{
    worker *w = arg;
    struct epoll_event evs[MAX_EVENTS];
    for (int i = 0; i < w->nconns; i++) {
        if (open_conn(w, &w->conns[i]) != 0) {
            w->failed = 1;
            return NULL;
        }
    }
    while (!atomic_load_explicit(&stopping, memory_order_relaxed) && !w->failed) {
        int n = epoll_wait(w->ep, evs, MAX_EVENTS, 100);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            w->failed = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            int rc = 0;
            if (c->fd < 0)
                continue;
            if (evs[i].events & (EPOLLERR | EPOLLHUP) && !(evs[i].events & EPOLLIN)) {
                reopen(w, c);
                continue;
            }
            if (!c->connected && (evs[i].events & EPOLLOUT)) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                c->connected = 1;
                if (epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0 || start_request(w, c) < 0)
                    rc = -1;
            } else if (c->connected && (evs[i].events & EPOLLOUT) && c->req != NULL &&
                       c->sent < c->req->len) {
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                rc = send_rest(w, c);
                if (rc == 0 && epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev) != 0)
                    rc = -1;
            }
            if (rc >= 0 && c->connected && (evs[i].events & EPOLLIN))
                rc = on_readable(w, c);
            if (rc < 0)
                reopen(w, c);
        }
    }
    for (int i = 0; i < w->nconns; i++)
        close_conn(&w->conns[i]);
    return NULL;
}

/* Reads FILE's lines into reqs, each made a whole HTTP/1.1 request for HOST:PORT. */
static int
load_requests(const char *file, const char *host, const char *port)
{
    FILE *f = fopen(file, "r");
    char line[65536];
    size_t cap = 0;
    if (f == NULL) {
        perror(file);
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *method = line, *path, *body, *nl;
        size_t blen;
        int n;
        request r;
        if ((nl = strchr(line, '\n')) != NULL)
            *nl = '\0';
        if (line[0] == '\0')
            continue;
        path = strchr(method, '\t');
        if (path == NULL) {
            fprintf(stderr, "loadgen: %s: a line without a tab: %s\n", file, line);
            (void)fclose(f);
            return -1;
        }
        *path++ = '\0';
        body = strchr(path, '\t');
        if (body != NULL)
            *body++ = '\0';
        else
            body = "";
        blen = strlen(body);
        n = snprintf(NULL, 0, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, host, port, blen, body);
        if (n < 0 || (r.data = malloc((size_t)n + 1)) == NULL) {
            (void)fclose(f);
            return -1;
        }
        if (snprintf(r.data, (size_t)n + 1,
                     "%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Length: %zu\r\n\r\n%s", method,
                     path, host, port, blen, body) != n) {
            free(r.data);
            (void)fclose(f);
            return -1;
        }
        r.len = (size_t)n;
        if (nreqs == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            request *grown = realloc(reqs, ncap * sizeof(*reqs));
            if (grown == NULL) {
                free(r.data);
                (void)fclose(f);
                return -1;
            }
            reqs = grown;
            cap = ncap;
        }
        reqs[nreqs++] = r;
    }
    if (fclose(f) != 0 || nreqs == 0) {
        fprintf(stderr, "loadgen: %s: no requests\n", file);
        return -1;
    }
    return 0;
}

static double
percentile(const uint32_t *hist, uint64_t total, double q)
{
    uint64_t want = (uint64_t)((double)total * q), seen = 0;
    for (uint32_t us = 0; us < HIST_US; us++) {
        seen += hist[us];
        if (seen > want)
            return us / 1000.0;
    }
    return HIST_US / 1000.0;
}

static void
usage(void)
{
    fprintf(stderr, "usage: loadgen [-t THREADS] [-c CONNECTIONS] [-d SECONDS] [-r] "
                    "HOST PORT REQUESTS\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    int threads = 2, conns = 64, seconds = 10, opt, rc = 0;
    worker *ws;
    uint32_t *hist;
    uint64_t done = 0, non2xx = 0, errors = 0, t0, t1;
    struct timespec pause;
    while ((opt = getopt(argc, argv, "t:c:d:r")) != -1) {
        switch (opt) {
        case 't': threads = atoi(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'd': seconds = atoi(optarg); break;
        case 'r': pick_random = 1; break;
        default: usage();
        }
    }
    if (argc - optind != 3 || threads < 1 || conns < threads || seconds < 1)
        usage();
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)atoi(argv[optind + 1]));
    if (inet_pton(AF_INET, argv[optind], &addr.sin_addr) != 1) {
        fprintf(stderr, "loadgen: %s is not an IPv4 address\n", argv[optind]);
        return 2;
    }
    if (load_requests(argv[optind + 2], argv[optind], argv[optind + 1]) != 0)
        return 2;
    ws = calloc((size_t)threads, sizeof(*ws));
    hist = calloc(HIST_US, sizeof(*hist));
    if (ws == NULL || hist == NULL) {
        perror("loadgen");
        return 1;
    }
    t0 = now_ns();
    for (int i = 0; i < threads; i++) {
        worker *w = &ws[i];
        w->nconns = conns / threads + (i < conns % threads);
        w->conns = calloc((size_t)w->nconns, sizeof(*w->conns));
        w->hist = calloc(HIST_US, sizeof(*w->hist));
        w->rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1) ^ t0;
        w->turn = (uint64_t)i * 7919u;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        if (w->conns == NULL || w->hist == NULL || w->ep < 0) {
            perror("loadgen");
            return 1;
        }
        for (int j = 0; j < w->nconns; j++)
            w->conns[j].fd = -1;
        if ((errno = pthread_create(&w->th, NULL, run_worker, w)) != 0) {
            perror("loadgen: pthread_create");
            return 1;
        }
    }
    pause.tv_sec = seconds;
    pause.tv_nsec = 0;
    while (nanosleep(&pause, &pause) != 0 && errno == EINTR)
        ;
    atomic_store(&stopping, 1);
    t1 = now_ns();
    for (int i = 0; i < threads; i++) {
        worker *w = &ws[i];
        if ((errno = pthread_join(w->th, NULL)) != 0) {
            perror("loadgen: pthread_join");
            return 1;
        }
        if (w->failed) {
            fprintf(stderr, "loadgen: thread %d stopped: can not connect or poll (%s)\n", i,
                    strerror(errno));
            rc = 1;
        }
        for (uint32_t us = 0; us < HIST_US; us++)
            hist[us] += w->hist[us];
        done += w->done;
        non2xx += w->non2xx;
        errors += w->errors;
        (void)close(w->ep);
        free(w->conns);
        free(w->hist);
    }
    printf("requests %llu\nseconds %.3f\nrps %.1f\np50_ms %.3f\np99_ms %.3f\nnon2xx %llu\n"
           "errors %llu\n",
           (unsigned long long)done, (double)(t1 - t0) / 1e9,
           (double)done / ((double)(t1 - t0) / 1e9), percentile(hist, done, 0.5),
           percentile(hist, done, 0.99), (unsigned long long)non2xx, (unsigned long long)errors);
    free(hist);
    free(ws);
    for (size_t i = 0; i < nreqs; i++)
        free(reqs[i].data);
    free(reqs);
    return rc;
}
