/* aiolowlat io_uring core: one ring per event loop.
 *
 * The core owns the hot path of stream sockets: a multishot recv into a
 * provided-buffer ring and an ordered send queue per connection. Python sees
 * only batched events (al_wait fills three parallel arrays), so per event the
 * only Python work is the protocol callback. Other operations (connect, accept,
 * poll for add_reader, one-shot recv/send for sock_*) are "py ops": their
 * completion is handed to Python as is, keyed by a Python token.
 */
#ifndef AIOLOWLAT_URING_H
#define AIOLOWLAT_URING_H
#include <stdint.h>
#include <stddef.h>

typedef struct al_loop al_loop;
typedef struct al_conn al_conn;

/* Event kinds, in the low 3 bits of the token Python receives (tok<<3 | kind). */
enum {
    AL_EV_OP = 0,     /* py op completed: res = cqe res, aux = cqe flags */
    AL_EV_DATA = 1,   /* conn bytes: res = length, aux = offset into the pool */
    AL_EV_EOF = 2,    /* conn peer closed its write side */
    AL_EV_ERR = 3,    /* conn recv/send failed: res = -errno */
    AL_EV_DRAIN = 4,  /* conn pending output fell to the low-water mark */
    AL_EV_CLOSED = 5, /* conn released by the core: Python may close the fd */
    AL_EV_DGRAM = 6,  /* datagram: res = payload length, aux = payload offset
                         | source address length << 40, stamp = receive time;
                         the address sits AL_DGRAM_NAME_SPACE bytes before the
                         payload (and before the control space, if any) */
};

enum {
    AL_DGRAM_NAME_SPACE = 128,   /* sizeof(struct sockaddr_storage) */
    AL_DGRAM_CONTROL_SPACE = 64, /* CMSG_SPACE(3 timespecs): one SCM_TIMESTAMPING */
};

/* Setup flags for al_loop_new. The default ring defers task work to the
 * loop's own wait (DEFER_TASKRUN, one issuer thread); AL_BUSY_POLL makes
 * completions visible to a user-space spin instead. */
enum { AL_SQPOLL = 1, AL_BUSY_POLL = 2 };

al_loop *al_loop_new(unsigned entries, unsigned nbufs, unsigned bufsize, int flags, int *err);
void al_loop_free(al_loop *l);
int al_loop_ring_fd(al_loop *l);
unsigned char *al_loop_pool(al_loop *l);
size_t al_loop_pool_size(al_loop *l);
int al_loop_wake_fd(al_loop *l);    /* eventfd: a write from any thread ends a wait */
int al_loop_inflight(al_loop *l);   /* operations the kernel still owns */
void al_loop_stats(al_loop *l, uint64_t *out, int n);

/* Submit queued work, wait up to timeout_ns (<0: forever, 0: poll) -- or
 * spin in user space on a AL_BUSY_POLL ring -- then reap up to max events.
 * Returns the count or -errno (-EEXIST: called from another thread than the
 * one that first waited). Buffers handed out by the previous call are recycled
 * first. */
int al_wait(al_loop *l, int64_t timeout_ns, uint64_t *toks, int64_t *res, uint64_t *aux,
            int64_t *stamps, int max);

/* Connections (stream sockets). al_stream_new also puts the socket in the
 * ring's file table (fewer kernel lookups per recv/send) while a slot is free. */
al_conn *al_conn_new(al_loop *l, int fd, uint64_t token);
al_conn *al_stream_new(al_loop *l, int fd, uint64_t token);
void al_conn_free(al_conn *c);      /* only after al_loop_free: nothing in flight */
int al_conn_recv_start(al_loop *l, al_conn *c);
int al_conn_recv_stop(al_loop *l, al_conn *c);
int64_t al_conn_send(al_loop *l, al_conn *c, const char *buf, size_t len);
int64_t al_conn_pending(al_conn *c);

/* Datagram sockets (timestamps: receive the SCM_TIMESTAMPING control message
 * the socket was set up for, and report its time in ns): the same conn, receiving by multishot recvmsg and sending
 * one sendmsg per datagram (addr may be NULL on a connected socket). A failed
 * send or receive posts AL_EV_ERR and the socket goes on (ICMP errors). */
al_conn *al_dgram_new(al_loop *l, int fd, uint64_t token, int timestamps);
int64_t al_dgram_send(al_loop *l, al_conn *c, const char *buf, size_t len,
                      const void *addr, unsigned addrlen);
void al_conn_notify_drain(al_conn *c, size_t low_water);
int al_conn_shutdown_wr(al_loop *l, al_conn *c);
int al_conn_close(al_loop *l, al_conn *c, int abort);

/* Py ops: the token comes back as (token<<3 | AL_EV_OP). */
int al_op_poll(al_loop *l, int fd, unsigned mask, uint64_t token);
int al_op_accept_multishot(al_loop *l, int fd, uint64_t token);
int al_op_accept(al_loop *l, int fd, uint64_t token);
int al_op_connect(al_loop *l, int fd, const void *addr, unsigned addrlen, uint64_t token);
int al_op_recv(al_loop *l, int fd, void *buf, size_t len, int flags, uint64_t token);
int al_op_send(al_loop *l, int fd, const void *buf, size_t len, int flags, uint64_t token);
int al_op_cancel(al_loop *l, uint64_t token);

#endif
