/* Datagram helpers: receive timestamps from control messages, batched recvmmsg. */
#define _GNU_SOURCE
#include "dgram.h"
#include "uring.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h> /* before linux/errqueue.h, whose scm_timestamping needs timespec */
#include <linux/errqueue.h>

#define BATCH_MAX 64

static int64_t ts_ns(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec;
}

int64_t al_rx_time(const void *control, size_t len)
{
    const unsigned char *p = control, *end = p + len;
    while (p && p + sizeof(struct cmsghdr) <= end) {
        const struct cmsghdr *cm = (const struct cmsghdr *)p;
        if (cm->cmsg_len < sizeof *cm || cm->cmsg_len > (size_t)(end - p))
            break; /* malformed: no time rather than a wild read */
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPING &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct scm_timestamping))) {
            struct scm_timestamping st;
            memcpy(&st, CMSG_DATA(cm), sizeof st);
            return ts_ns(&st.ts[2]) ? ts_ns(&st.ts[2]) : ts_ns(&st.ts[0]);
        }
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct timespec))) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(cm), sizeof ts);
            return ts_ns(&ts);
        }
        p += CMSG_ALIGN(cm->cmsg_len);
    }
    return 0;
}

int64_t al_rx_time_or_now(const void *control, size_t len)
{
    int64_t stamp = al_rx_time(control, len);
    if (stamp)
        return stamp;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return ts_ns(&now);
}

int al_recv_batch(int fd, unsigned char *buf, unsigned slot, int max, int32_t *lens,
                  int64_t *stamps, unsigned char *names, uint32_t *namelens)
{
    struct mmsghdr msgs[BATCH_MAX];
    struct iovec iovs[BATCH_MAX];
    unsigned char control[BATCH_MAX][AL_DGRAM_CONTROL_SPACE];
    if (max > BATCH_MAX)
        max = BATCH_MAX;
    memset(msgs, 0, sizeof(struct mmsghdr) * (size_t)max);
    for (int i = 0; i < max; i++) {
        iovs[i].iov_base = buf + (size_t)i * slot;
        iovs[i].iov_len = slot;
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = names + (size_t)i * AL_DGRAM_NAME_SPACE;
        msgs[i].msg_hdr.msg_namelen = AL_DGRAM_NAME_SPACE;
        msgs[i].msg_hdr.msg_control = control[i];
        msgs[i].msg_hdr.msg_controllen = sizeof control[i];
    }
    int n = recvmmsg(fd, msgs, (unsigned)max, MSG_DONTWAIT, NULL);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    size_t packed = 0;
    for (int i = 0; i < n; i++) {
        const struct msghdr *h = &msgs[i].msg_hdr;
        lens[i] = (h->msg_flags & MSG_TRUNC) ? -(int32_t)msgs[i].msg_len : (int32_t)msgs[i].msg_len;
        /* Back to back from buf[0], so the caller copies the batch out in one piece
         * and slices it (a truncated datagram keeps what the slot held). */
        size_t kept = msgs[i].msg_len < slot ? msgs[i].msg_len : slot;
        if (packed != (size_t)i * slot)
            memmove(buf + packed, buf + (size_t)i * slot, kept);
        packed += kept;
        stamps[i] = al_rx_time_or_now(h->msg_control, h->msg_controllen);
        /* A feed has one sender: 0 says "as the previous datagram", so the caller
         * decodes an address once per batch rather than once per datagram. */
        namelens[i] = i > 0 && h->msg_namelen == msgs[i - 1].msg_hdr.msg_namelen &&
                      memcmp(h->msg_name, msgs[i - 1].msg_hdr.msg_name, h->msg_namelen) == 0
                          ? 0 : h->msg_namelen;
    }
    return n;
}
