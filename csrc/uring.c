/* aiolowlat io_uring core; see uring.h for the model. */
#define _GNU_SOURCE
#include "uring.h"
#include "dgram.h"

#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* user_data = pointer or (python token << 3), tagged in the low 3 bits. */
enum { TAG_PY = 0, TAG_RECV = 1, TAG_SEND = 2, TAG_WAKE = 3, TAG_IGNORE = 4, TAG_DSEND = 5,
       TAG_TIMER = 6 };
#define TAG_MASK 7ull
#define BGID 0

enum { ST_CQES, ST_ENOBUFS, ST_RECV_ARMS, ST_SENDS, ST_SHORT_SENDS, ST_SQ_FULL,
       ST_DGRAM_TRUNCATED, ST_DGRAM_BAD, ST_WAITS, ST_DIRECT_SENDS, ST_TIMER_ARMS,
       ST_POLLS_SKIPPED, ST_N };

/* A wait's deadline may come out this much earlier than the armed timer's without
 * moving it: the two are computed from separate clock reads. */
#define TIMER_SLACK_NS 10000

struct al_loop {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    size_t br_size;
    unsigned char *pool;
    unsigned nbufs, bufsize, mask;
    uint16_t *recycle; /* buffer ids handed to Python by the last al_wait */
    unsigned nrecycle;
    /* The kernel takes provided buffers in ring order, so a ring holding all
     * nbufs would cycle every receive through the whole pool (16 MiB by
     * default) and miss the cache on each one. The ring holds only `target`
     * buffers; the rest wait on a stack, most recently used on top. */
    uint16_t *spare;
    unsigned nspare, in_ring, target;
    /* Stream sockets sit in the ring's file table (IOSQE_FIXED_FILE): no file
     * lookup and reference per recv and send. free_slots is a stack. */
    int *free_slots;
    unsigned nfree_slots;
    int evfd;
    uint64_t evbuf;
    int busy_poll;
    pid_t owner; /* the thread that enabled the ring; 0 until the first wait */
    int inflight; /* SQEs whose final CQE has not been reaped */
    int last_events; /* events the last wait handed to Python: 0 or 1 is a quiet loop */
    /* The wait's deadline is one IORING_OP_TIMEOUT kept armed across waits, moved only
     * when the deadline comes earlier: a timeout on every io_uring_enter costs an
     * hrtimer set-up and tear-down per wait (64 B ping-pong in C: ~3 % of the RTT). */
    int64_t timer_at; /* its absolute CLOCK_MONOTONIC deadline in ns; 0: none armed */
    struct __kernel_timespec timer_ts, timer_move_ts; /* read by the kernel at submit */
    int timer_op_failed; /* the kernel refused it: back to a timeout per wait */
    uint64_t stats[ST_N];
};

struct al_conn {
    al_loop *l;
    uint64_t token;
    int fd;
    int slot; /* index in the ring's file table, or -1: use fd */
    unsigned recv_armed : 1, recv_want : 1, recv_cancelling : 1, recv_done : 1;
    unsigned send_inflight : 1, closing : 1, aborting : 1, shut_wr : 1, notify_drain : 1;
    unsigned dgram : 1;
    unsigned dsends;        /* datagram sends in flight */
    size_t dpending;        /* their bytes */
    struct msghdr rmsg;     /* recvmsg template: name space, no control */
    char *out; /* the buffer the kernel is sending from */
    size_t out_len, out_off, out_cap;
    char *q; /* bytes written while a send is in flight, sent next in order */
    size_t q_len, q_cap;
    size_t low_water;
};

/* An SQE, flushing the SQ to the kernel first when it is full. */
static struct io_uring_sqe *get_sqe(al_loop *l)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
    if (!sqe) {
        l->stats[ST_SQ_FULL]++;
        io_uring_submit(&l->ring);
        sqe = io_uring_get_sqe(&l->ring);
    }
    return sqe;
}

/* Internal ops that are not counted in flight: they live as long as the loop. */
static int uncounted(uint64_t ud)
{
    return (ud & TAG_MASK) == TAG_IGNORE || (ud & TAG_MASK) == TAG_TIMER;
}

static void set_ud(al_loop *l, struct io_uring_sqe *sqe, uint64_t ud)
{
    io_uring_sqe_set_data64(sqe, ud);
    if (!uncounted(ud))
        l->inflight++;
}

static int arm_wake(al_loop *l)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_read(sqe, l->evfd, &l->evbuf, sizeof l->evbuf, 0);
    set_ud(l, sqe, TAG_WAKE);
    return 0;
}

static void recycle_buffers(al_loop *l);

/* liburing 2.3 lacks io_uring_setup_buf_ring: map and register it here. */
static int setup_buf_ring(al_loop *l)
{
    l->br_size = (size_t)l->nbufs * sizeof(struct io_uring_buf);
    void *p = mmap(NULL, l->br_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    struct io_uring_buf_reg reg = {.ring_addr = (uintptr_t)p, .ring_entries = l->nbufs, .bgid = BGID};
    int ret = io_uring_register_buf_ring(&l->ring, &reg, 0);
    if (ret) {
        munmap(p, l->br_size);
        return ret;
    }
    l->br = p;
    io_uring_buf_ring_init(l->br);
    for (unsigned i = l->nbufs; i-- > 0;) /* buffer 0 on top */
        l->spare[l->nspare++] = (uint16_t)i;
    l->target = l->nbufs < 64 ? l->nbufs : 64; /* doubled on each ENOBUFS */
    recycle_buffers(l);
    return 0;
}

/* The ring starts disabled; the thread that first waits enables it and becomes
 * its only issuer, so a loop may be created in one thread and run in another. */
static int init_ring(al_loop *l, unsigned entries, int flags)
{
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED | IORING_SETUP_SINGLE_ISSUER;
    p.cq_entries = entries * 4; /* multishot ops post many CQEs per SQE */
    l->busy_poll = !!(flags & AL_BUSY_POLL);
    if (flags & AL_SQPOLL) {
        p.flags |= IORING_SETUP_SQPOLL;
        p.sq_thread_idle = 1000;
    } else {
        /* Task work runs inside our own io_uring_enter: fewer wake-ups, batched
         * completions, and no IPI into a busy-polling thread, which sees
         * IORING_SQ_TASKRUN and enters. (COOP_TASKRUN there ran the same work through
         * the generic task_work path: 64 B ping-pong in C ~4 % slower, 10 pairs.) */
        p.flags |= IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    }
    int ret = io_uring_queue_init_params(entries, &l->ring, &p);
    if (ret == -EINVAL) { /* kernels before 6.1: plain ring */
        p.flags &= ~(IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
                     IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG);
        ret = io_uring_queue_init_params(entries, &l->ring, &p);
    }
    return ret;
}

enum { FILE_SLOTS = 8192 };

static void setup_file_table(al_loop *l)
{
    struct rlimit rl;
    unsigned n = FILE_SLOTS;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n)
        n = (unsigned)rl.rlim_cur; /* the kernel refuses a table larger than this */
    l->free_slots = calloc(n, sizeof *l->free_slots);
    if (!l->free_slots || io_uring_register_files_sparse(&l->ring, n) != 0)
        return;
    for (unsigned i = n; i-- > 0;)
        l->free_slots[l->nfree_slots++] = (int)i;
}

static pid_t current_tid(void)
{
    static __thread pid_t tid;
    if (!tid)
        tid = (pid_t)syscall(SYS_gettid);
    return tid;
}

/* First wait: enable the ring for this thread and register its fd with it
 * (saves an fd lookup per io_uring_enter). */
static int claim_ring(al_loop *l)
{
    if (l->owner)
        return l->owner == current_tid() ? 0 : -EEXIST;
    /* liburing 2.3 declares io_uring_enable_rings but does not export it. */
    if (syscall(__NR_io_uring_register, l->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0))
        return -errno;
    l->owner = current_tid();
    io_uring_register_ring_fd(&l->ring); /* an optimisation: failure is fine */
    return 0;
}

al_loop *al_loop_new(unsigned entries, unsigned nbufs, unsigned bufsize, int flags, int *err)
{
    al_loop *l = calloc(1, sizeof *l);
    if (!l) {
        *err = -ENOMEM;
        return NULL;
    }
    l->evfd = -1;
    if (nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1))) {
        *err = -EINVAL; /* the kernel wants a power of two */
        free(l);
        return NULL;
    }
    int ret = init_ring(l, entries, flags);
    if (ret) {
        *err = ret;
        free(l);
        return NULL;
    }
    l->nbufs = nbufs;
    l->bufsize = bufsize;
    l->mask = io_uring_buf_ring_mask(nbufs);
    l->pool = mmap(NULL, (size_t)nbufs * bufsize, PROT_READ | PROT_WRITE,
                   MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    l->recycle = calloc(nbufs, sizeof *l->recycle);
    l->spare = calloc(nbufs, sizeof *l->spare);
    l->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->pool == MAP_FAILED || !l->recycle || !l->spare || l->evfd < 0) {
        ret = -ENOMEM;
        if (l->pool == MAP_FAILED)
            l->pool = NULL;
    } else {
        ret = setup_buf_ring(l);
        if (!ret)
            ret = arm_wake(l);
        if (!ret)
            setup_file_table(l); /* an optimisation: without it, conns go by fd */
    }
    if (ret) {
        *err = ret;
        al_loop_free(l);
        return NULL;
    }
    *err = 0;
    return l;
}

void al_loop_free(al_loop *l)
{
    if (!l)
        return;
    io_uring_queue_exit(&l->ring); /* cancels whatever is still in flight */
    if (l->br)
        munmap(l->br, l->br_size);
    if (l->pool)
        munmap(l->pool, (size_t)l->nbufs * l->bufsize);
    if (l->evfd >= 0)
        close(l->evfd);
    free(l->recycle);
    free(l->spare);
    free(l->free_slots);
    free(l);
}

int al_loop_ring_fd(al_loop *l) { return l->ring.ring_fd; }
unsigned char *al_loop_pool(al_loop *l) { return l->pool; }
size_t al_loop_pool_size(al_loop *l) { return (size_t)l->nbufs * l->bufsize; }
int al_loop_inflight(al_loop *l) { return l->inflight; }

void al_loop_stats(al_loop *l, uint64_t *out, int n)
{
    for (int i = 0; i < n && i < ST_N; i++)
        out[i] = l->stats[i];
}

int al_loop_wake_fd(al_loop *l) { return l->evfd; }

/* ---- connections ---- */

al_conn *al_conn_new(al_loop *l, int fd, uint64_t token)
{
    al_conn *c = calloc(1, sizeof *c);
    if (c) {
        c->l = l;
        c->fd = fd;
        c->slot = -1;
        c->token = token;
    }
    return c;
}

/* Put a stream socket in the file table; without a free slot (or if the kernel
 * refuses), the conn simply goes on by fd. */
static void take_slot(al_loop *l, al_conn *c)
{
    if (!l->nfree_slots)
        return;
    int slot = l->free_slots[l->nfree_slots - 1];
    if (io_uring_register_files_update(&l->ring, (unsigned)slot, &c->fd, 1) == 1) {
        l->nfree_slots--;
        c->slot = slot;
    }
}

/* The conn is done with the kernel: give its slot back (the table's reference
 * to the socket goes, so closing the fd closes it), then free it. */
static void release_conn(al_loop *l, al_conn *c)
{
    if (c->slot >= 0) {
        int none = -1;
        if (io_uring_register_files_update(&l->ring, (unsigned)c->slot, &none, 1) == 1)
            l->free_slots[l->nfree_slots++] = c->slot;
    }
    al_conn_free(c);
}

al_conn *al_stream_new(al_loop *l, int fd, uint64_t token)
{
    al_conn *c = al_conn_new(l, fd, token);
    if (c)
        take_slot(l, c);
    return c;
}

void al_conn_free(al_conn *c)
{
    free(c->out);
    free(c->q);
    free(c);
}

al_conn *al_dgram_new(al_loop *l, int fd, uint64_t token, int timestamps)
{
    al_conn *c = al_stream_new(l, fd, token); /* the file table too: no fget per op */
    if (c) {
        c->dgram = 1;
        c->rmsg.msg_namelen = AL_DGRAM_NAME_SPACE;
        c->rmsg.msg_controllen = timestamps ? AL_DGRAM_CONTROL_SPACE : 0;
    }
    return c;
}

/* One datagram in flight: its bytes and destination, in one allocation. */
struct dsend {
    struct sockaddr_storage addr;
    al_conn *c;
    size_t len;
    char data[];
};

/* A plain send with the destination in the SQE (the kernel's sendto, 6.0+):
 * no msghdr or iovec for the kernel to copy in and check per datagram. */
int64_t al_dgram_send(al_loop *l, al_conn *c, const char *buf, size_t len, const void *addr,
                      unsigned addrlen)
{
    if (c->closing)
        return -EPIPE;
    if (addrlen > sizeof(struct sockaddr_storage))
        return -EINVAL;
    if (l->last_events <= 1 && !c->dsends) {
        /* A quiet loop with nothing in flight: sendto(2) at once, as al_conn_send does
         * (cheaper than a ring send and its completion). An error is the caller's now, as
         * asyncio's sendto() hands it to error_received; a full buffer takes the ring. */
        ssize_t n = sendto(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL,
                           (const struct sockaddr *)addr, addrlen);
        if (n == (ssize_t)len) {
            l->stats[ST_DIRECT_SENDS]++;
            return (int64_t)c->dpending;
        }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS &&
            errno != EINTR)
            return -errno;
    }
    struct dsend *d = malloc(sizeof *d + len);
    if (!d)
        return -ENOMEM;
    memcpy(d->data, buf, len);
    d->len = len;
    d->c = c;
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe) {
        free(d);
        return -EBUSY;
    }
    io_uring_prep_send(sqe, c->slot >= 0 ? c->slot : c->fd, d->data, len, 0);
    if (c->slot >= 0)
        sqe->flags |= IOSQE_FIXED_FILE;
    if (addrlen) {
        memcpy(&d->addr, addr, addrlen);
        io_uring_prep_send_set_addr(sqe, (const struct sockaddr *)&d->addr, (uint16_t)addrlen);
    }
    set_ud(l, sqe, (uint64_t)(uintptr_t)d | TAG_DSEND);
    c->dsends++;
    c->dpending += len;
    l->stats[ST_SENDS]++;
    return (int64_t)c->dpending;
}

static int arm_recv(al_loop *l, al_conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return -EBUSY;
    int fd = c->slot >= 0 ? c->slot : c->fd;
    if (c->dgram)
        io_uring_prep_recvmsg_multishot(sqe, fd, &c->rmsg, 0);
    else
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    if (c->slot >= 0)
        sqe->flags |= IOSQE_FIXED_FILE;
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    set_ud(l, sqe, (uint64_t)(uintptr_t)c | TAG_RECV);
    c->recv_armed = 1;
    l->stats[ST_RECV_ARMS]++;
    return 0;
}

static int cancel_ud(al_loop *l, uint64_t ud)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_cancel64(sqe, ud, 0);
    set_ud(l, sqe, TAG_IGNORE);
    return 0;
}

static int cancel_recv(al_loop *l, al_conn *c)
{
    if (!c->recv_armed || c->recv_cancelling)
        return 0;
    c->recv_cancelling = 1;
    return cancel_ud(l, (uint64_t)(uintptr_t)c | TAG_RECV);
}

int al_conn_recv_start(al_loop *l, al_conn *c)
{
    c->recv_want = 1;
    if (c->recv_armed || c->recv_done || c->closing)
        return 0; /* a cancelled recv re-arms itself when its CQE arrives */
    return arm_recv(l, c);
}

int al_conn_recv_stop(al_loop *l, al_conn *c)
{
    c->recv_want = 0;
    return cancel_recv(l, c);
}

static int submit_send(al_loop *l, al_conn *c)
{
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_send(sqe, c->slot >= 0 ? c->slot : c->fd, c->out + c->out_off,
                       c->out_len - c->out_off, MSG_NOSIGNAL | MSG_WAITALL);
    if (c->slot >= 0)
        sqe->flags |= IOSQE_FIXED_FILE;
    set_ud(l, sqe, (uint64_t)(uintptr_t)c | TAG_SEND);
    c->send_inflight = 1;
    l->stats[ST_SENDS]++;
    return 0;
}

static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 4096;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (!nb)
        return -ENOMEM;
    *buf = nb;
    *cap = ncap;
    return 0;
}

int64_t al_conn_pending(al_conn *c)
{
    return (int64_t)(c->out_len - c->out_off + c->q_len + c->dpending);
}

/* Queue bytes for sending, in order: one send in flight per connection, the
 * rest coalesced behind it. Returns the bytes now pending, or -errno. */
int64_t al_conn_send(al_loop *l, al_conn *c, const char *buf, size_t len)
{
    if (c->closing || c->shut_wr)
        return -EPIPE;
    if (c->send_inflight) {
        if (reserve(&c->q, &c->q_cap, c->q_len + len))
            return -ENOMEM;
        memcpy(c->q + c->q_len, buf, len);
        c->q_len += len;
        return al_conn_pending(c);
    }
    /* Nothing in flight and a quiet loop (the last wait brought at most one event):
     * offer the bytes to the socket first, as asyncio's write() does. A send(2) that
     * takes them all costs less than an io_uring send and its completion (64 B TCP
     * ping-pong in C on our ring, one core: 15.1 -> 14.4 us); a busy loop's sends are
     * cheaper batched into its next io_uring_enter (100 connections: 1.5x uvloop's round
     * trips/s, 1.0-1.3x with a send(2) each). What send(2) leaves, or an error, goes by
     * io_uring as before: in order, errors reported as completions. */
    ssize_t sent = l->last_events > 1 ? 0 : send(c->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent == (ssize_t)len) {
        l->stats[ST_DIRECT_SENDS]++;
        return 0;
    }
    size_t done = sent > 0 ? (size_t)sent : 0;
    len -= done;
    if (reserve(&c->out, &c->out_cap, len))
        return -ENOMEM;
    memcpy(c->out, buf + done, len);
    c->out_len = len;
    c->out_off = 0;
    int ret = submit_send(l, c);
    return ret ? ret : (int64_t)len;
}

void al_conn_notify_drain(al_conn *c, size_t low_water)
{
    c->low_water = low_water;
    c->notify_drain = 1;
}

int al_conn_shutdown_wr(al_loop *l, al_conn *c)
{
    (void)l;
    c->shut_wr = 1;
    if (!c->send_inflight)
        return shutdown(c->fd, SHUT_WR) ? -errno : 0;
    return 0; /* done when the last send completes */
}

/* Where al_wait writes the events for Python: parallel arrays and a count. */
struct out {
    uint64_t *toks;
    int64_t *res;
    uint64_t *aux;
    int64_t *stamps; /* receive time, for datagrams */
    int n;
};

static void post(struct out *o, uint64_t tok, int kind, int64_t r, uint64_t a)
{
    o->toks[o->n] = tok << 3 | (uint64_t)kind;
    o->res[o->n] = r;
    o->aux[o->n] = a;
    o->stamps[o->n] = 0;
    o->n++;
}

/* Returns 1 when the connection has been released (CLOSED posted, c freed). */
static int maybe_finish(al_loop *l, al_conn *c, struct out *o)
{
    if (!c->closing || c->send_inflight || c->dsends)
        return 0;
    if (c->recv_armed) {
        cancel_recv(l, c);
        return 0;
    }
    post(o, c->token, AL_EV_CLOSED, 0, 0);
    release_conn(l, c);
    return 1;
}

/* Close: flush pending output (unless abort), stop receiving, then post
 * AL_EV_CLOSED. Returns 1 if released at once (nothing in flight). */
int al_conn_close(al_loop *l, al_conn *c, int abort)
{
    c->closing = 1;
    c->recv_want = 0;
    if (abort) {
        c->aborting = 1;
        c->q_len = 0;
        if (c->send_inflight)
            cancel_ud(l, (uint64_t)(uintptr_t)c | TAG_SEND);
    }
    if (c->send_inflight || c->dsends)
        return 0;
    if (c->recv_armed) {
        cancel_recv(l, c);
        return 0;
    }
    release_conn(l, c);
    return 1;
}

static void on_send(al_loop *l, al_conn *c, int r, struct out *o)
{
    c->send_inflight = 0;
    if (r == -EINTR || r == -EAGAIN) {
        if (!c->aborting)
            submit_send(l, c);
    } else if (r < 0) {
        c->out_len = c->out_off = c->q_len = 0;
        if (!c->aborting)
            post(o, c->token, AL_EV_ERR, r, 0);
    } else {
        c->out_off += (size_t)r;
        if (c->out_off < c->out_len && !c->aborting) {
            l->stats[ST_SHORT_SENDS]++;
            submit_send(l, c);
        } else if (c->q_len && !c->aborting) {
            char *t = c->out; /* the queue becomes the in-flight buffer */
            size_t tc = c->out_cap;
            c->out = c->q;
            c->out_cap = c->q_cap;
            c->out_len = c->q_len;
            c->out_off = 0;
            c->q = t;
            c->q_cap = tc;
            c->q_len = 0;
            submit_send(l, c);
        } else {
            c->out_len = c->out_off = 0;
            if (c->shut_wr && !c->closing)
                shutdown(c->fd, SHUT_WR);
        }
    }
    if (c->notify_drain && al_conn_pending(c) <= (int64_t)c->low_water) {
        c->notify_drain = 0;
        if (!c->closing)
            post(o, c->token, AL_EV_DRAIN, al_conn_pending(c), 0);
    }
    maybe_finish(l, c, o);
}

static void on_dsend(al_loop *l, struct dsend *d, int r, struct out *o)
{
    al_conn *c = d->c;
    c->dsends--;
    c->dpending -= d->len;
    free(d);
    if (r < 0 && !c->closing)
        post(o, c->token, AL_EV_ERR, r, 0);
    if (c->notify_drain && al_conn_pending(c) <= (int64_t)c->low_water) {
        c->notify_drain = 0;
        if (!c->closing)
            post(o, c->token, AL_EV_DRAIN, al_conn_pending(c), 0);
    }
    maybe_finish(l, c, o);
}

static void on_recv(al_loop *l, al_conn *c, struct io_uring_cqe *cqe, struct out *o)
{
    int r = cqe->res;
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        c->recv_armed = 0;
        c->recv_cancelling = 0;
    }
    if (r > 0 && c->dgram) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        l->recycle[l->nrecycle++] = (uint16_t)bid;
        unsigned char *buf = l->pool + (size_t)bid * l->bufsize;
        struct io_uring_recvmsg_out *m = io_uring_recvmsg_validate(buf, r, &c->rmsg);
        if (!m) {
            l->stats[ST_DGRAM_BAD]++;
        } else if (!c->closing) {
            if (m->flags & MSG_TRUNC)
                l->stats[ST_DGRAM_TRUNCATED]++; /* longer than a buffer: counted, cut */
            unsigned char *payload = io_uring_recvmsg_payload(m, &c->rmsg);
            uint64_t namelen = m->namelen < AL_DGRAM_NAME_SPACE ? m->namelen : AL_DGRAM_NAME_SPACE;
            post(o, c->token, AL_EV_DGRAM, io_uring_recvmsg_payload_length(m, r, &c->rmsg),
                 (uint64_t)(payload - l->pool) | namelen << 40);
            if (c->rmsg.msg_controllen)
                o->stamps[o->n - 1] = al_rx_time_or_now(
                    (unsigned char *)io_uring_recvmsg_name(m) + c->rmsg.msg_namelen, m->controllen);
        }
    } else if (r > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        l->recycle[l->nrecycle++] = (uint16_t)bid;
        if (!c->closing)
            post(o, c->token, AL_EV_DATA, r, (uint64_t)bid * l->bufsize);
    } else if (r == 0) {
        c->recv_done = 1;
        if (!c->closing)
            post(o, c->token, AL_EV_EOF, 0, 0);
    } else if (r == -ENOBUFS) {
        l->stats[ST_ENOBUFS]++; /* re-armed below, after the pool is recycled */
        if (l->target < l->nbufs)
            l->target *= 2; /* a burst wanted more buffers than the ring held */
    } else if (r != -ECANCELED) {
        c->recv_done = !c->dgram; /* a datagram socket reports and goes on */
        if (!c->closing)
            post(o, c->token, AL_EV_ERR, r, 0);
    }
    if (maybe_finish(l, c, o))
        return;
    if (!c->recv_armed && c->recv_want && !c->recv_done && !c->closing)
        arm_recv(l, c);
}

/* ---- the wait ---- */

static void recycle_buffers(al_loop *l)
{
    for (unsigned i = 0; i < l->nrecycle; i++)
        l->spare[l->nspare++] = l->recycle[i];
    l->nrecycle = 0;
    unsigned added = 0;
    while (l->in_ring + added < l->target && l->nspare) {
        unsigned bid = l->spare[--l->nspare];
        io_uring_buf_ring_add(l->br, l->pool + (size_t)bid * l->bufsize, l->bufsize, bid, l->mask,
                              (int)added++);
    }
    if (added) {
        io_uring_buf_ring_advance(l->br, (int)added);
        l->in_ring += added;
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Submit and wait once. Returns 0 (completions may be there), 1 (the deadline
 * passed or a signal arrived: return to Python) or -errno. */
static int taskrun_pending(struct io_uring *ring)
{
    return IO_URING_READ_ONCE(*ring->sq.kflags) & IORING_SQ_TASKRUN;
}

static void set_ts(struct __kernel_timespec *ts, int64_t ns)
{
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
}

/* Have the armed timer fire by `at` (CLOCK_MONOTONIC ns). Returns 1 when it will, so the
 * wait needs no timeout of its own; 0 when this wait must carry it (SQPOLL: the timer's
 * SQE would reach the kernel only when the SQ thread gets to it; or the kernel
 * refused the op). A timer armed earlier than needed is left: it wakes the loop
 * early, once, and the next wait arms the later deadline. */
static int arm_timer(al_loop *l, int64_t at)
{
    if (l->timer_op_failed || (l->ring.flags & IORING_SETUP_SQPOLL))
        return 0;
    if (l->timer_at && l->timer_at <= at + TIMER_SLACK_NS)
        return 1;
    struct io_uring_sqe *sqe = get_sqe(l);
    if (!sqe)
        return 0;
    if (!l->timer_at) {
        set_ts(&l->timer_ts, at);
        io_uring_prep_timeout(sqe, &l->timer_ts, 0, IORING_TIMEOUT_ABS);
        set_ud(l, sqe, TAG_TIMER);
    } else {
        /* If the timer fires before this reaches it, the move fails (-ENOENT, a CQE
         * that ends the wait) and the timer's own CQE says the deadline passed. */
        set_ts(&l->timer_move_ts, at);
        io_uring_prep_timeout_update(sqe, &l->timer_move_ts, TAG_TIMER, IORING_TIMEOUT_ABS);
        io_uring_sqe_set_flags(sqe, IOSQE_CQE_SKIP_SUCCESS);
        set_ud(l, sqe, TAG_IGNORE);
    }
    l->timer_at = at;
    l->stats[ST_TIMER_ARMS]++;
    return 1;
}

/* deadline: now + timeout_ns when timeout_ns > 0, read once per al_wait. */
static int enter(al_loop *l, int64_t timeout_ns, int64_t deadline)
{
    struct io_uring *ring = &l->ring;
    int ret = 0;
    if (io_uring_cq_ready(ring)) {
        if (io_uring_sq_ready(ring))
            ret = io_uring_submit(ring);
    } else if (timeout_ns == 0) {
        /* A poll (Python has callbacks ready). IORING_SQ_TASKRUN says whether deferred
         * task work waits for us: with none, nothing to submit and an empty CQ, an
         * io_uring_enter would bring nothing, so skip the syscall (a loop running
         * callbacks back to back: ~0.4 us an iteration here). */
        if (io_uring_sq_ready(ring) || taskrun_pending(ring) ||
            !(ring->flags & IORING_SETUP_TASKRUN_FLAG))
            ret = io_uring_submit_and_get_events(ring); /* runs deferred task work */
        else
            l->stats[ST_POLLS_SKIPPED]++;
    } else if (l->busy_poll) {
        if (io_uring_sq_ready(ring))
            ret = io_uring_submit(ring);
        /* Spin on the CQ in user space: a syscall only when the kernel has
         * task work for us (IORING_SQ_TASKRUN), none while idle. */
        if (timeout_ns < 0)
            deadline = INT64_MAX;
        for (unsigned spins = 1; !io_uring_cq_ready(ring); spins++) {
            if (taskrun_pending(ring)) {
                io_uring_get_events(ring);
                continue;
            }
            /* No PAUSE here: under a hypervisor, PAUSE-loop exiting hands the
             * vCPU away and a 10 us round trip became 25 us (measured). */
            if ((spins & 255) == 0 && now_ns() >= deadline)
                return 1;
        }
    } else if (timeout_ns < 0 || arm_timer(l, deadline)) {
        ret = io_uring_submit_and_wait(ring, 1);
    } else {
        struct __kernel_timespec ts;
        set_ts(&ts, timeout_ns);
        struct io_uring_cqe *cqe;
        ret = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, NULL);
    }
    if (ret == -ETIME || ret == -EINTR)
        return 1;
    if (ret == -EAGAIN || ret == -EBUSY)
        return 0; /* CQ overflow pressure: reap, then try again */
    return ret < 0 ? ret : 0;
}

/* Turn CQEs into events for Python; internal completions (full sends, re-arms)
 * end here. Sets *woken when the eventfd fired. */
static void reap(al_loop *l, struct out *o, int max, int *woken)
{
    struct io_uring *ring = &l->ring;
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(ring, head, cqe)
    {
        if (o->n > max - 2 || l->nrecycle >= l->nbufs)
            break; /* each CQE posts at most two events */
        seen++;
        uint64_t ud = cqe->user_data;
        unsigned tag = ud & TAG_MASK;
        void *ptr = (void *)(uintptr_t)(ud & ~TAG_MASK);
        if (!uncounted(ud) && !(cqe->flags & IORING_CQE_F_MORE))
            l->inflight--;
        if (cqe->flags & IORING_CQE_F_BUFFER)
            l->in_ring--; /* the kernel took one from the ring */
        switch (tag) {
        case TAG_PY:
            post(o, ud >> 3, AL_EV_OP, cqe->res, cqe->flags);
            break;
        case TAG_RECV:
            on_recv(l, ptr, cqe, o);
            break;
        case TAG_SEND:
            on_send(l, ptr, cqe->res, o);
            break;
        case TAG_DSEND:
            on_dsend(l, ptr, cqe->res, o);
            break;
        case TAG_WAKE:
            *woken = 1;
            arm_wake(l);
            break;
        case TAG_TIMER:
            l->timer_at = 0;
            if (cqe->res != -ETIME)
                l->timer_op_failed = 1;
            *woken = 1; /* the deadline passed (or may have): back to Python's timers */
            break;
        default:
            break;
        }
    }
    io_uring_cq_advance(ring, seen);
    l->stats[ST_CQES] += seen;
}

int al_wait(al_loop *l, int64_t timeout_ns, uint64_t *toks, int64_t *res, uint64_t *aux,
            int64_t *stamps, int max)
{
    int claimed = claim_ring(l);
    if (claimed)
        return claimed;
    int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : 0;
    struct out o = {.toks = toks, .res = res, .aux = aux, .stamps = stamps};
    for (;;) {
        /* Python is done with the bytes it was handed (or none were handed). */
        recycle_buffers(l);
        int stop = enter(l, timeout_ns, deadline);
        l->stats[ST_WAITS]++;
        if (stop < 0)
            return stop;
        int woken = 0;
        reap(l, &o, max, &woken);
        l->last_events = o.n;
        if (o.n || woken || stop || timeout_ns == 0)
            return o.n;
        /* Only internal completions (a send that went out in full): keep waiting
         * here rather than costing Python a loop iteration. */
        if (timeout_ns > 0) {
            timeout_ns = deadline - now_ns();
            if (timeout_ns <= 0)
                return 0;
        }
    }
}

/* ---- py ops ---- */

#define PY_OP(l, sqe)                   \
    struct io_uring_sqe *sqe = get_sqe(l); \
    if (!sqe)                           \
        return -EBUSY

int al_op_poll(al_loop *l, int fd, unsigned mask, uint64_t token)
{
    PY_OP(l, sqe);
    io_uring_prep_poll_add(sqe, fd, mask);
    set_ud(l, sqe, token << 3);
    return 0;
}

int al_op_accept_multishot(al_loop *l, int fd, uint64_t token)
{
    PY_OP(l, sqe);
    io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    set_ud(l, sqe, token << 3);
    return 0;
}

int al_op_accept(al_loop *l, int fd, uint64_t token)
{
    PY_OP(l, sqe);
    io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    set_ud(l, sqe, token << 3);
    return 0;
}

int al_op_connect(al_loop *l, int fd, const void *addr, unsigned addrlen, uint64_t token)
{
    PY_OP(l, sqe);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)addr, addrlen);
    set_ud(l, sqe, token << 3);
    return 0;
}

int al_op_recv(al_loop *l, int fd, void *buf, size_t len, int flags, uint64_t token)
{
    PY_OP(l, sqe);
    io_uring_prep_recv(sqe, fd, buf, len, flags);
    set_ud(l, sqe, token << 3);
    return 0;
}

int al_op_send(al_loop *l, int fd, const void *buf, size_t len, int flags, uint64_t token)
{
    PY_OP(l, sqe);
    io_uring_prep_send(sqe, fd, buf, len, flags | MSG_NOSIGNAL);
    set_ud(l, sqe, token << 3);
    return 0;
}

int al_op_cancel(al_loop *l, uint64_t token)
{
    return cancel_ud(l, token << 3);
}
