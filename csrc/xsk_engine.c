/* The AF_XDP driver of the bypass engine: libxdp's UMEM and XSK, copy mode, native XDP
 * with a generic (SKB) fallback. RX frames go straight back to the fill ring once
 * parsed (the payload is copied into the SPSC ring); TX frames come from a free list
 * refilled from the completion ring. */
#define _GNU_SOURCE
#include "xsk_engine.h"

#include <errno.h>
#include <stdarg.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <xdp/libxdp.h>
#include <xdp/xsk.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <stddef.h>

#include "bypass_engine.h"

#ifndef SO_PREFER_BUSY_POLL
#define SO_PREFER_BUSY_POLL 69
#endif
#ifndef SO_BUSY_POLL_BUDGET
#define SO_BUSY_POLL_BUDGET 70
#endif

enum {
    FRAMES = 4096,
    FRAME_SIZE = 2048,
    RX_FRAMES = FRAMES / 2,       /* frames 0..RX_FRAMES-1 cycle through fill and RX */
    RING_SIZE = FRAMES / 2,       /* fill, completion, RX and TX rings */
    EBUSY_RETRY_MS = 2000,        /* a queue just released by another XSK stays busy briefly */
};

struct xsk_drv {
    void *area;
    struct xsk_umem *umem;
    struct xsk_socket *xsk;
    struct xsk_ring_prod fq, tx;
    struct xsk_ring_cons cq, rx;
    int fd, ifindex, map_fd, prog_fd;
    uint32_t attach_flags;
    uint64_t free_tx[FRAMES - RX_FRAMES];
    uint32_t nfree;
};

static int read_mac(struct bp_engine *e, uint8_t *mac)
{
    struct ifreq ifr = {0};
    _Static_assert(sizeof e->cfg.ifname <= 32, "ifname fits");
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return bp_fail(e, "socket: %s", strerror(errno));
    memcpy(ifr.ifr_name, e->cfg.ifname, IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFHWADDR, &ifr);
    close(fd);
    if (rc)
        return bp_fail(e, "cannot read the MAC of %s: %s", e->cfg.ifname, strerror(errno));
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    return 0;
}

/* Our XDP program: redirect every frame of its queue to the XSK in xsks_map (frames
 * of queues without a socket go on to the kernel). Loaded from these few instructions
 * by libbpf, so no clang, no bpffs, and no file descriptor kept anywhere but here. */
static const char PROG_NAME[] = "al_xsk_redirect";

static int load_program(struct bp_engine *e, int map_fd)
{
    struct bpf_insn prog[] = {
        /* r2 = ctx->rx_queue_index */
        {.code = BPF_LDX | BPF_MEM | BPF_W, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_1,
         .off = offsetof(struct xdp_md, rx_queue_index)},
        /* r1 = &xsks_map (two instructions: a 64-bit immediate) */
        {.code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1,
         .src_reg = BPF_PSEUDO_MAP_FD, .imm = map_fd},
        {0},
        /* r3 = XDP_PASS: the action when the queue has no socket */
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = XDP_PASS},
        {.code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect_map},
        {.code = BPF_JMP | BPF_EXIT},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts);
    int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, PROG_NAME, "Dual BSD/GPL", prog,
                           sizeof prog / sizeof prog[0], &opts);
    if (fd < 0)
        return bp_fail(e, "cannot load the XDP redirect program: %s (needs CAP_BPF and "
                       "CAP_NET_ADMIN, or root)", strerror(-fd));
    return fd;
}

uint32_t bp_xdp_attached(int ifindex, char *name, size_t len, uint8_t *mode)
{
    LIBBPF_OPTS(bpf_xdp_query_opts, q);
    name[0] = 0;
    if (bpf_xdp_query(ifindex, 0, &q) || !q.prog_id)
        return 0;
    *mode = q.attach_mode;
    int fd = bpf_prog_get_fd_by_id(q.prog_id);
    if (fd >= 0) {
        struct bpf_prog_info info;
        uint32_t info_len = sizeof info;
        memset(&info, 0, sizeof info);
        if (!bpf_obj_get_info_by_fd(fd, &info, &info_len))
            snprintf(name, len, "%s", info.name);
        close(fd);
    }
    return q.prog_id;
}

int bp_xdp_detach_stale(int ifindex)
{
    char name[BPF_OBJ_NAME_LEN];
    uint8_t mode;
    if (!bp_xdp_attached(ifindex, name, sizeof name, &mode))
        return 0;
    if (strcmp(name, PROG_NAME) != 0 && strcmp(name, "xsk_def_prog") != 0)
        return -1;
    int rc = bpf_xdp_detach(ifindex, XDP_FLAGS_DRV_MODE, NULL);
    if (rc)
        rc = bpf_xdp_detach(ifindex, XDP_FLAGS_SKB_MODE, NULL);
    return rc ? -2 : 1;
}

static int clear_stale_program(struct bp_engine *e, int ifindex)
{
    int rc = bp_xdp_detach_stale(ifindex);
    if (rc == 1)
        e->st.stale_xdp_cleared++;
    if (rc == -1)
        return bp_fail(e, "%s already has an XDP program that is not aiolowlat's; remove it "
                       "(ip link set dev %s xdp off) or pick another interface",
                       e->cfg.ifname, e->cfg.ifname);
    if (rc == -2)
        return bp_fail(e, "cannot detach the stale XDP program on %s (ip link set dev %s "
                       "xdp off)", e->cfg.ifname, e->cfg.ifname);
    return 0;
}

/* Attach prog_fd in the configured mode (auto: native, else generic); the mode or -1. */
static int attach_program(struct bp_engine *e, struct xsk_drv *d)
{
    uint32_t modes[2], n = 0;
    if (e->cfg.xdp_mode != BP_XDP_SKB)
        modes[n++] = XDP_FLAGS_DRV_MODE;
    if (e->cfg.xdp_mode != BP_XDP_NATIVE)
        modes[n++] = XDP_FLAGS_SKB_MODE;
    int rc = -EINVAL;
    for (uint32_t i = 0; i < n; i++) {
        rc = bpf_xdp_attach(d->ifindex, d->prog_fd, modes[i] | XDP_FLAGS_UPDATE_IF_NOEXIST,
                            NULL);
        if (!rc) {
            d->attach_flags = modes[i];
            e->st.xdp_mode = modes[i] == XDP_FLAGS_DRV_MODE ? BP_XDP_NATIVE : BP_XDP_SKB;
            return 0;
        }
    }
    return bp_fail(e, "cannot attach XDP to %s: %s (needs CAP_NET_ADMIN; xdp_mode native "
                   "needs driver support)", e->cfg.ifname, strerror(-rc));
}

static int create_socket(struct bp_engine *e, struct xsk_drv *d)
{
    struct xsk_socket_config cfg = {
        .rx_size = RING_SIZE, .tx_size = RING_SIZE,
        .libxdp_flags = XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD,  /* our program, see above */
        .bind_flags = XDP_COPY | XDP_USE_NEED_WAKEUP,
    };
    struct timespec pause = {0, 10 * 1000 * 1000};
    int rc;
    for (int waited = 0;; waited += 10) {
        rc = xsk_socket__create(&d->xsk, e->cfg.ifname, e->cfg.queue, d->umem, &d->rx, &d->tx,
                                &cfg);
        if (rc != -EBUSY || waited >= EBUSY_RETRY_MS)
            return rc;
        e->st.start_retries++;
        nanosleep(&pause, NULL);
    }
}

static void set_busy_poll(struct bp_engine *e, struct xsk_drv *d)
{
    int one = 1, usecs = 20, budget = BP_BURST;
    e->st.busy_poll_sockopt =
        setsockopt(d->fd, SOL_SOCKET, SO_PREFER_BUSY_POLL, &one, sizeof one) == 0 &&
        setsockopt(d->fd, SOL_SOCKET, SO_BUSY_POLL, &usecs, sizeof usecs) == 0 &&
        setsockopt(d->fd, SOL_SOCKET, SO_BUSY_POLL_BUDGET, &budget, sizeof budget) == 0;
}

static int quiet(enum libxdp_print_level level, const char *fmt, va_list ap)
{
    (void)level, (void)fmt, (void)ap;
    return 0;  /* failures reach the caller as e->error, with the fix */
}

static int quiet_bpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    (void)level, (void)fmt, (void)ap;
    return 0;
}

static void xsk_teardown(struct bp_engine *e);

static int xsk_setup(struct bp_engine *e)
{
    if (!getenv("AIOLOWLAT_XDP_DEBUG")) {  /* libxdp chats on stderr (e.g. "no bpffs") */
        libxdp_set_print(quiet);
        libbpf_set_print(quiet_bpf);
    }
    struct xsk_drv *d = calloc(1, sizeof *d);
    if (!d)
        return bp_fail(e, "out of memory");
    e->drv = d;
    d->map_fd = d->prog_fd = -1;
    e->frame_size = FRAME_SIZE;
    d->ifindex = (int)if_nametoindex(e->cfg.ifname);
    if (!d->ifindex) {
        bp_fail(e, "no interface %s%s%s", e->cfg.ifname, e->cfg.netns[0] ? " in " : "",
                e->cfg.netns);
        goto fail;
    }
    uint8_t mac[6] = {0}, zero[6] = {0};
    memcpy(mac, e->cfg.mac, 6);
    if (memcmp(mac, zero, 6) == 0 && read_mac(e, mac))
        goto fail;
    bp_init_packets(e, mac);
    if (clear_stale_program(e, d->ifindex))
        goto fail;

    size_t size = (size_t)FRAMES * FRAME_SIZE;
    if (posix_memalign(&d->area, (size_t)getpagesize(), size)) {
        bp_fail(e, "cannot allocate the UMEM (%zu bytes)", size);
        goto fail;
    }
    struct xsk_umem_config ucfg = {.fill_size = RING_SIZE, .comp_size = RING_SIZE,
                                   .frame_size = FRAME_SIZE, .frame_headroom = 0};
    int rc = xsk_umem__create(&d->umem, d->area, size, &d->fq, &d->cq, &ucfg);
    if (rc) {
        bp_fail(e, "xsk_umem__create: %s (needs CAP_NET_ADMIN, CAP_IPC_LOCK or a "
                "memlock limit of %zu bytes: ulimit -l)", strerror(-rc), size);
        goto fail;
    }
    rc = create_socket(e, d);
    if (rc) {
        bp_fail(e, "xsk_socket__create on %s queue %u: %s (needs CAP_NET_ADMIN and a free "
                "queue; EBUSY: another AF_XDP socket holds it)", e->cfg.ifname, e->cfg.queue,
                strerror(-rc));
        goto fail;
    }
    d->fd = xsk_socket__fd(d->xsk);
    set_busy_poll(e, d);
    d->map_fd = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "al_xsks", sizeof(int), sizeof(int),
                               e->cfg.queue + 1, NULL);
    if (d->map_fd < 0) {
        bp_fail(e, "cannot create the XSK map: %s (needs CAP_BPF)", strerror(-d->map_fd));
        goto fail;
    }
    int key = (int)e->cfg.queue;
    if (bpf_map_update_elem(d->map_fd, &key, &d->fd, 0)) {
        bp_fail(e, "cannot put the XSK in its map: %s", strerror(errno));
        goto fail;
    }
    d->prog_fd = load_program(e, d->map_fd);
    if (d->prog_fd < 0 || attach_program(e, d))
        goto fail;

    uint32_t idx;
    if (xsk_ring_prod__reserve(&d->fq, RX_FRAMES, &idx) != RX_FRAMES) {
        bp_fail(e, "cannot fill the XSK fill ring");
        goto fail;
    }
    for (uint32_t i = 0; i < RX_FRAMES; i++)
        *xsk_ring_prod__fill_addr(&d->fq, idx + i) = (uint64_t)i * FRAME_SIZE;
    xsk_ring_prod__submit(&d->fq, RX_FRAMES);
    for (uint32_t i = RX_FRAMES; i < FRAMES; i++)
        d->free_tx[d->nfree++] = (uint64_t)i * FRAME_SIZE;
    return 0;
fail:
    xsk_teardown(e);
    return -1;
}

static int xsk_rx(struct bp_engine *e, struct xsk_drv *d)
{
    uint32_t idx_rx, idx_fq;
    uint32_t n = xsk_ring_cons__peek(&d->rx, BP_BURST, &idx_rx);
    if (!n) {
        if (xsk_ring_prod__needs_wakeup(&d->fq) && e->cfg.busy_poll)
            recvfrom(d->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
        return 0;
    }
    int64_t now = bp_now_ns(CLOCK_REALTIME);
    /* Every RX frame goes back to the fill ring: its slots free up as RX is consumed. */
    while (xsk_ring_prod__reserve(&d->fq, n, &idx_fq) != n)
        ;
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *desc = xsk_ring_cons__rx_desc(&d->rx, idx_rx + i);
        bp_rx_frame(e, xsk_umem__get_data(d->area, desc->addr), desc->len, now);
        *xsk_ring_prod__fill_addr(&d->fq, idx_fq + i) = desc->addr & ~(uint64_t)(FRAME_SIZE - 1);
    }
    xsk_ring_cons__release(&d->rx, n);
    xsk_ring_prod__submit(&d->fq, n);
    bp_rx_done(e);
    return (int)n;
}

static int xsk_tx(struct bp_engine *e, struct xsk_drv *d)
{
    uint32_t idx = 0;
    uint32_t done = xsk_ring_cons__peek(&d->cq, RING_SIZE, &idx);
    for (uint32_t i = 0; i < done; i++)
        d->free_tx[d->nfree++] = *xsk_ring_cons__comp_addr(&d->cq, idx + i);
    if (done)
        xsk_ring_cons__release(&d->cq, done);

    uint64_t addrs[BP_BURST];
    uint32_t lens[BP_BURST], n = 0;
    int64_t now = bp_now_ns(CLOCK_MONOTONIC);
    while (n < BP_BURST && d->nfree) {
        uint64_t addr = d->free_tx[d->nfree - 1];
        uint32_t len = bp_tx_next(e, xsk_umem__get_data(d->area, addr), FRAME_SIZE, now);
        if (!len)
            break;
        d->nfree--;
        addrs[n] = addr;
        lens[n++] = len;
    }
    if (n) {
        /* TX ring and TX frames are the same size: a free frame always finds a TX slot. */
        xsk_ring_prod__reserve(&d->tx, n, &idx);
        for (uint32_t i = 0; i < n; i++) {
            struct xdp_desc *desc = xsk_ring_prod__tx_desc(&d->tx, idx + i);
            desc->addr = addrs[i];
            desc->len = lens[i];
        }
        xsk_ring_prod__submit(&d->tx, n);
    }
    /* Copy mode sends only from a system call; kick while frames are outstanding. */
    if ((n || d->nfree < FRAMES - RX_FRAMES) && xsk_ring_prod__needs_wakeup(&d->tx)) {
        e->st.tx_kicks++;
        if (sendto(d->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) < 0 && errno != EAGAIN &&
            errno != EBUSY && errno != ENOBUFS && errno != ENETDOWN)
            e->st.tx_errors++;
    }
    return (int)(n + done);
}

static int xsk_poll(struct bp_engine *e)
{
    struct xsk_drv *d = e->drv;
    int rx = xsk_rx(e, d);
    return rx + xsk_tx(e, d);
}

static void xsk_wait(struct bp_engine *e, int timeout_us)
{
    struct xsk_drv *d = e->drv;
    struct pollfd fds[2] = {{.fd = d->fd, .events = POLLIN}, {.fd = e->tx_efd, .events = POLLIN}};
    struct timespec ts = {0, (long)timeout_us * 1000};
    ppoll(fds, 2, &ts, NULL);
}

static void xsk_teardown(struct bp_engine *e)
{
    struct xsk_drv *d = e->drv;
    if (!d)
        return;
    if (d->attach_flags)  /* first, so no frame is redirected to a closing socket */
        bpf_xdp_detach(d->ifindex, d->attach_flags, NULL);
    if (d->xsk)
        xsk_socket__delete(d->xsk);
    if (d->umem)
        xsk_umem__delete(d->umem);
    free(d->area);
    if (d->prog_fd >= 0)
        close(d->prog_fd);
    if (d->map_fd >= 0)
        close(d->map_fd);
    free(d);
    e->drv = NULL;
}

/* Frames the kernel could not hand to the XSK: any thread may ask (a getsockopt). */
static void xsk_stats(struct bp_engine *e, struct bp_stats *out)
{
    struct xsk_drv *d = e->drv;
    struct xdp_statistics xs;
    socklen_t len = sizeof xs;
    memset(&xs, 0, sizeof xs);
    if (d->xsk && getsockopt(d->fd, SOL_XDP, XDP_STATISTICS, &xs, &len) == 0)
        out->nic_rx_dropped = xs.rx_dropped + xs.rx_ring_full + xs.rx_invalid_descs;
}

const struct bp_ops bp_xsk_ops = {"af_xdp", xsk_setup, xsk_poll, xsk_wait, xsk_teardown,
                                  xsk_stats};

struct bp_engine *xsk_engine_start(const struct bp_config *cfg, char *error)
{
    return bp_start(BP_KIND_XSK, cfg, error);
}
