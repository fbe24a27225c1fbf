/* The floor reference of benchmarks/loop_echo.py: its TCP cases in C alone, on rings set up
 * as the aiolowlat loop sets up its own (multishot recv into a provided-buffer ring, fixed
 * files, DEFER_TASKRUN; a quiet loop's send by send(2), a busy one's batched into the ring),
 * no Python. What the loop adds on top of this is its cost; what this costs is the kernel's.
 * A standalone program; client and server are two processes, pinned as the benchmark pins.
 *
 *   loop_pingpong latency SIZE COUNT WARMUP BUSY SERVER_CORE CLIENT_CORE
 *       one connection, one message in flight; prints rtt percentiles as a JSON line
 *   loop_pingpong throughput SIZE CONNS SECONDS WARMUP_S BUSY SERVER_CORE CLIENT_CORE
 *       CONNS connections in lock-step; prints round trips/s as a JSON line
 *
 * BUSY=1 spins on the completion queue (entering the kernel only for IORING_SQ_TASKRUN),
 * as aiolowlat's busy-poll mode does. BUSY=2 (latency only) uses no ring: each side spins
 * on recv(2) with MSG_DONTWAIT, a syscall per spin; the data is read as soon as it lands,
 * with no poll wake-up or task work between, so the gap from BUSY=1 to it is what
 * io_uring's completion path costs a busy-polling side. Both sides give up after 60 s (alarm).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { NBUFS = 1024, BUFSIZE = 16384, MAX_CONNS = 1024, TAG_SEND = 1ull << 62 };

struct side {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    unsigned char *pool;
    int busy, plain, nfds, *fds; /* plain: BUSY=2, no ring */
    int last_events; /* events the last reap brought: <= 1 is a quiet loop */
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what, int err)
{
    fprintf(stderr, "loop_pingpong: %s: %s\n", what, strerror(err < 0 ? -err : err));
    exit(1);
}

static void pin(int core)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (sched_setaffinity(0, sizeof set, &set))
        die("sched_setaffinity", errno);
}

static void arm_recv(struct side *s, int i)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    io_uring_prep_recv_multishot(sqe, i, NULL, 0, 0);
    sqe->flags |= IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data64(sqe, (uint64_t)i);
}

static void setup(struct side *s, int *fds, int nfds, int busy)
{
    s->busy = busy;
    s->plain = busy == 2;
    s->fds = fds;
    s->nfds = nfds;
    if (s->plain)
        return;
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
              IORING_SETUP_TASKRUN_FLAG;
    p.cq_entries = 4 * 4096;
    int ret = io_uring_queue_init_params(4096, &s->ring, &p);
    if (ret)
        die("io_uring_queue_init_params", ret);
    io_uring_register_ring_fd(&s->ring);
    if ((ret = io_uring_register_files(&s->ring, fds, (unsigned)nfds)))
        die("io_uring_register_files", ret);
    s->br = mmap(NULL, NBUFS * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                 MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    s->pool = malloc((size_t)NBUFS * BUFSIZE);
    if (s->br == MAP_FAILED || !s->pool)
        die("buffers", ENOMEM);
    struct io_uring_buf_reg reg = {.ring_addr = (uintptr_t)s->br, .ring_entries = NBUFS};
    if ((ret = io_uring_register_buf_ring(&s->ring, &reg, 0)))
        die("io_uring_register_buf_ring", ret);
    io_uring_buf_ring_init(s->br);
    for (int i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(s->br, s->pool + (size_t)i * BUFSIZE, BUFSIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(s->br, NBUFS);
    for (int i = 0; i < nfds; i++)
        arm_recv(s, i);
}

/* Submit what is queued and wait for a completion: blocking, or spinning on the CQ. */
static void wait_cqe(struct side *s)
{
    int ret;
    if (!s->busy) {
        ret = io_uring_submit_and_wait(&s->ring, 1);
    } else {
        ret = io_uring_submit(&s->ring);
        while (ret >= 0 && !io_uring_cq_ready(&s->ring))
            if (IO_URING_READ_ONCE(*s->ring.sq.kflags) & IORING_SQ_TASKRUN)
                ret = io_uring_get_events(&s->ring);
    }
    if (ret < 0 && ret != -EINTR)
        die("io_uring_enter", ret);
}

/* Send len bytes on connection i: by send(2) when the loop is quiet, else an SQE (the
 * bytes copied, freed when it completes), as the aiolowlat loop chooses. */
static void send_bytes(struct side *s, int i, const void *buf, size_t len)
{
    if (s->last_events <= 1 && send(s->fds[i], buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)len)
        return;
    if (s->plain)
        die("send", errno ? errno : EAGAIN); /* a 64 B message always fits the socket */
    void *copy = malloc(len);
    if (!copy)
        die("malloc", ENOMEM);
    memcpy(copy, buf, len);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (!sqe) {
        io_uring_submit(&s->ring);
        sqe = io_uring_get_sqe(&s->ring);
    }
    io_uring_prep_send(sqe, i, copy, len, MSG_NOSIGNAL | MSG_WAITALL);
    sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)copy | TAG_SEND);
}

/* Reap every ready CQE; on_data(i, bytes, n) for each receive. Returns connections that
 * reached EOF in this call. */
typedef void (*on_data_fn)(struct side *s, int i, const unsigned char *data, int n);

static int reap(struct side *s, on_data_fn on_data)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int eofs = 0, events = 0;
    io_uring_for_each_cqe(&s->ring, head, cqe) events += !(cqe->user_data & TAG_SEND);
    s->last_events = events;
    io_uring_for_each_cqe(&s->ring, head, cqe)
    {
        seen++;
        uint64_t ud = cqe->user_data;
        if (ud & TAG_SEND) {
            if (cqe->res < 0)
                die("send", cqe->res);
            free((void *)(uintptr_t)(ud & ~TAG_SEND));
            continue;
        }
        int i = (int)ud;
        if (cqe->res > 0) {
            unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            on_data(s, i, s->pool + (size_t)bid * BUFSIZE, cqe->res);
            io_uring_buf_ring_add(s->br, s->pool + (size_t)bid * BUFSIZE, BUFSIZE,
                                  (unsigned short)bid, io_uring_buf_ring_mask(NBUFS), 0);
            io_uring_buf_ring_advance(s->br, 1);
        } else if (cqe->res == 0) {
            eofs++;
            continue;
        } else if (cqe->res != -ENOBUFS) {
            die("recv", cqe->res);
        }
        if (!(cqe->flags & IORING_CQE_F_MORE))
            arm_recv(s, i);
    }
    io_uring_cq_advance(&s->ring, seen);
    return eofs;
}

/* BUSY=2: spin on recv(2) on the one connection until bytes or EOF come (1 at EOF). */
static int plain_recv(struct side *s, on_data_fn on_data)
{
    static unsigned char buf[BUFSIZE];
    for (;;) {
        ssize_t n = recv(s->fds[0], buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            on_data(s, 0, buf, (int)n);
            return 0;
        }
        if (n == 0)
            return 1;
        if (errno != EAGAIN && errno != EINTR)
            die("recv", errno);
    }
}

/* Wait for what arrives and hand it to on_data; returns connections that reached EOF. */
static int next_events(struct side *s, on_data_fn on_data)
{
    if (s->plain)
        return plain_recv(s, on_data);
    wait_cqe(s);
    return reap(s, on_data);
}

/* ---- server: echo until every connection has closed ---- */

static void echo_back(struct side *s, int i, const unsigned char *data, int n)
{
    send_bytes(s, i, data, (size_t)n);
}

static void serve(int *fds, int n, int busy)
{
    struct side s = {0};
    alarm(60); /* not inherited across fork */
    setup(&s, fds, n, busy);
    for (int open = n; open > 0;)
        open -= next_events(&s, echo_back);
    exit(0);
}

/* ---- client ---- */

static size_t size;
static unsigned char payload[BUFSIZE];
static size_t *pending; /* bytes of the echo still to come, per connection */
static uint64_t completed;
static int lock_step; /* throughput: each echo completed sends the next message */

static void count_echo(struct side *s, int i, const unsigned char *data, int n)
{
    (void)data;
    pending[i] -= (size_t)n < pending[i] ? (size_t)n : pending[i];
    if (pending[i] == 0) {
        completed++;
        pending[i] = size;
        if (lock_step)
            send_bytes(s, i, payload, size);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void latency(struct side *s, long count, long warmup)
{
    int64_t *rtt = malloc((size_t)count * sizeof *rtt);
    if (!rtt)
        die("malloc", ENOMEM);
    int64_t started = 0;
    for (long k = 0; k < warmup + count; k++) {
        if (k == warmup)
            started = now_ns();
        int64_t t0 = now_ns();
        uint64_t before = completed;
        pending[0] = size;
        send_bytes(s, 0, payload, size);
        while (completed == before)
            next_events(s, count_echo);
        if (k >= warmup)
            rtt[k - warmup] = now_ns() - t0;
    }
    double wall = (double)(now_ns() - started);
    qsort(rtt, (size_t)count, sizeof *rtt, cmp_i64);
    printf("{\"rtt_p50_us\": %.2f, \"rtt_p99_us\": %.2f, \"rtt_p999_us\": %.2f, "
           "\"round_trips_per_s\": %.0f}\n",
           rtt[count / 2] / 1e3, rtt[count * 99 / 100] / 1e3, rtt[count * 999 / 1000] / 1e3,
           count * 1e9 / wall);
}

int main(int argc, char **argv)
{
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: see the comment at the top of loop_pingpong.c\n");
        return 2;
    }
    int lat = strcmp(argv[1], "latency") == 0;
    size = (size_t)atol(argv[2]);
    long n_or_count = atol(argv[3]);
    int conns = lat ? 1 : (int)n_or_count;
    int busy = atoi(argv[lat ? 5 : 6]);
    int server_core = atoi(argv[lat ? 6 : 7]), client_core = atoi(argv[lat ? 7 : 8]);
    if (size == 0 || size > BUFSIZE || conns < 1 || conns > MAX_CONNS || argc != (lat ? 8 : 9) ||
        busy < 0 || busy > 2 || (busy == 2 && !lat)) {
        fprintf(stderr, "loop_pingpong: bad arguments\n");
        return 2;
    }
    alarm(60);
    memset(payload, 'x', size);
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    if (listener < 0 || bind(listener, (void *)&a, sizeof a) || listen(listener, conns) ||
        getsockname(listener, (void *)&a, &alen))
        die("listen", errno);
    int *cfds = calloc((size_t)conns, sizeof *cfds), *sfds = calloc((size_t)conns, sizeof *sfds);
    pending = calloc((size_t)conns, sizeof *pending);
    for (int i = 0; i < conns; i++) {
        cfds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(cfds[i], (void *)&a, sizeof a) || (sfds[i] = accept(listener, NULL, NULL)) < 0)
            die("connect", errno);
        setsockopt(cfds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(sfds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    close(listener);
    pid_t server = fork();
    if (server < 0)
        die("fork", errno);
    if (server == 0) {
        for (int i = 0; i < conns; i++)
            close(cfds[i]);
        pin(server_core);
        serve(sfds, conns, busy);
    }
    for (int i = 0; i < conns; i++)
        close(sfds[i]);
    pin(client_core);
    struct side s = {0};
    setup(&s, cfds, conns, busy);
    if (lat) {
        latency(&s, n_or_count, atol(argv[4]));
    } else {
        double seconds = atof(argv[4]), warmup = atof(argv[5]);
        lock_step = 1;
        for (int i = 0; i < conns; i++) {
            pending[i] = size;
            send_bytes(&s, i, payload, size);
        }
        s.last_events = 2;
        int64_t t_start = now_ns() + (int64_t)(warmup * 1e9), t_end = t_start + (int64_t)(seconds * 1e9);
        uint64_t n0 = 0;
        int started = 0;
        for (int64_t t = now_ns(); t < t_end; t = now_ns()) {
            if (!started && t >= t_start) {
                n0 = completed;
                started = 1;
            }
            wait_cqe(&s);
            reap(&s, count_echo);
        }
        printf("{\"round_trips_per_s\": %.0f}\n", (completed - n0) / seconds);
    }
    fflush(stdout);
    for (int i = 0; i < conns; i++)
        shutdown(cfds[i], SHUT_WR);
    int status;
    waitpid(server, &status, 0);
    return 0;
}
