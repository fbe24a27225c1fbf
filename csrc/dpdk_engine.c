/* The DPDK driver of the bypass engine: one port (a virtual device probed per engine),
 * one RX and one TX queue, rte_eth_rx_burst / rte_eth_tx_burst.
 *
 * DPDK's EAL can be initialised once per process (rte_eal_cleanup does not allow a
 * second rte_eal_init), so the first engine initialises it with its EAL arguments and
 * every engine then hot-plugs its own port (rte_dev_probe) and removes it at stop.
 * A later engine asking for different EAL arguments gets an error saying so.
 */
#define _GNU_SOURCE
#include "dpdk_engine.h"

#include <dirent.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mbuf_pool_ops.h>
#include <rte_mempool.h>

#include "bypass_engine.h"

enum { MBUFS = 4095, MBUF_CACHE = 256, RX_DESC = 1024, TX_DESC = 1024, MAX_ARGS = 64 };

static const char DEFAULT_EAL_ARGS[] =
    "--no-huge --no-pci --no-shconf -m 256 --no-telemetry --log-level=error";

static pthread_mutex_t eal_lock = PTHREAD_MUTEX_INITIALIZER;
static int eal_state;            /* 0 not yet, 1 initialised, -1 failed (cannot retry) */
static char eal_used[512];       /* the arguments it was initialised with */
static unsigned port_counter;    /* unique virtual device names per process */

enum { MAX_PACKET_FDS = 8, FD_SCAN = 4096 };

struct dpdk_drv {
    uint16_t port;
    unsigned serial;
    int started;
    int packet_fds[MAX_PACKET_FDS], npacket_fds;  /* net_af_packet's sockets, see below */
    uint64_t packet_drops;
    char name[320];
    struct rte_mempool *pool;
};

static int init_eal(struct bp_engine *e)
{
    const char *args = e->cfg.eal_args[0] ? e->cfg.eal_args : DEFAULT_EAL_ARGS;
    char buf[sizeof e->cfg.eal_args + 32];
    int rc = 0;
    pthread_mutex_lock(&eal_lock);
    if (eal_state == 1) {
        if (strcmp(args, eal_used) != 0)
            rc = bp_fail(e, "DPDK's EAL is already initialised in this process with \"%s\"; "
                         "it cannot be initialised again with \"%s\" (DPDK allows one "
                         "rte_eal_init per process): use the same eal_args", eal_used, args);
    } else if (eal_state == -1) {
        rc = bp_fail(e, "DPDK's EAL failed to initialise earlier in this process (\"%s\") and "
                     "cannot be retried: restart the process", eal_used);
    } else {
        /* -l: the EAL pins its main thread; keep it on the engine's core (or core 0). */
        snprintf(buf, sizeof buf, "aiolowlat -l %d %s", e->cfg.core >= 0 ? e->cfg.core : 0,
                 args);
        char *argv[MAX_ARGS + 1], *save = NULL;
        int argc = 0;
        for (char *tok = strtok_r(buf, " ", &save); tok && argc < MAX_ARGS;
             tok = strtok_r(NULL, " ", &save))
            argv[argc++] = tok;
        argv[argc] = NULL;
        snprintf(eal_used, sizeof eal_used, "%s", args);
        if (rte_eal_init(argc, argv) < 0) {
            eal_state = -1;
            rc = bp_fail(e, "rte_eal_init(\"%s\"): %s (DPDK needs root or CAP_SYS_ADMIN, "
                         "CAP_NET_RAW and CAP_IPC_LOCK; without hugepages pass --no-huge -m "
                         "256; Debian: apt-get install dpdk libdpdk-dev)", args,
                         rte_strerror(rte_errno));
        } else {
            eal_state = 1;
        }
    }
    pthread_mutex_unlock(&eal_lock);
    return rc;
}

static void dpdk_teardown(struct bp_engine *e);

/* Which descriptors are open, as a bit set over the first FD_SCAN. */
static void open_fds(uint8_t *set)
{
    memset(set, 0, FD_SCAN / 8);
    DIR *dir = opendir("/proc/self/fd");
    if (!dir)
        return;
    for (struct dirent *d; (d = readdir(dir));) {
        int fd = atoi(d->d_name);
        if (fd > 0 && fd < FD_SCAN)
            set[fd / 8] |= (uint8_t)(1 << (fd % 8));
    }
    closedir(dir);
}

/* DPDK 22.11's net_af_packet never reads its sockets' PACKET_STATISTICS, so the frames
 * the kernel dropped on a full ring would go uncounted: find the AF_PACKET sockets the
 * probe opened (new descriptors of that domain) and read their drops ourselves. */
static void find_packet_sockets(struct dpdk_drv *d, const uint8_t *before)
{
    uint8_t after[FD_SCAN / 8];
    open_fds(after);
    for (int fd = 1; fd < FD_SCAN && d->npacket_fds < MAX_PACKET_FDS; fd++) {
        int is_new = (after[fd / 8] & ~before[fd / 8]) & (1 << (fd % 8));
        int domain = 0;
        socklen_t len = sizeof domain;
        if (is_new && getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
            domain == AF_PACKET)
            d->packet_fds[d->npacket_fds++] = fd;
    }
}

/* "net_af_packet,iface=X" -> probe "net_af_packet<N>,iface=X"; its port id.
 *
 * Why net_af_packet (and its cost): its TX ring makes the kernel build each frame as a
 * zero-copy page-fragment skb (tpacket_snd), which a veth copies into a fresh page when it
 * crosses into the peer namespace (skb_copy_ubufs), and which the receiver then handles
 * and frees as a non-linear skb. perf on the echo core puts the sendto at about 4 us per
 * round trip against 1.5 us for our AF_XDP engine: that, not user space, is the gap to
 * the C floor (qdisc_bypass is already the PMD's default; framecnt=512 did not help).
 * DPDK 22.11's net_af_xdp vdev is no way out here: it probes, then stalls on veth after
 * about 160 frames with this pool (2,500 with a pool four times larger: its umem is our
 * mempool and runs dry), busy_budget=0 and force_copy=1 change nothing, and the round
 * trips it did answer took no less than net_af_packet's (p50 15 us, floor 8 us). */
static int probe_port(struct bp_engine *e, struct dpdk_drv *d)
{
    char vdev[sizeof e->cfg.vdev];
    if (e->cfg.vdev[0])
        snprintf(vdev, sizeof vdev, "%s", e->cfg.vdev);
    else
        snprintf(vdev, sizeof vdev, "net_af_packet,iface=%s,framecnt=4096", e->cfg.ifname);
    char *comma = strchr(vdev, ',');
    const char *rest = comma ? comma + 1 : "";
    if (comma)
        *comma = 0;
    pthread_mutex_lock(&eal_lock);
    unsigned n = d->serial = port_counter++;
    pthread_mutex_unlock(&eal_lock);
    snprintf(d->name, sizeof d->name, "%s_al%u", vdev, n);
    char devargs[sizeof vdev + 80];
    snprintf(devargs, sizeof devargs, "%s%s%s", d->name, *rest ? "," : "", rest);
    uint8_t before[FD_SCAN / 8];
    pthread_mutex_lock(&eal_lock);  /* one probe at a time: its new sockets are its own */
    open_fds(before);
    int rc = rte_dev_probe(devargs);
    if (rc >= 0 && strncmp(d->name, "net_af_packet", 13) == 0)
        find_packet_sockets(d, before);
    pthread_mutex_unlock(&eal_lock);
    if (rc < 0) {
        d->name[0] = 0;
        return bp_fail(e, "rte_dev_probe(\"%s\"): %s (is the PMD installed: Debian package "
                       "dpdk; does the interface exist in this namespace?)", devargs,
                       rte_strerror(-rc));
    }
    if (rte_eth_dev_get_port_by_name(d->name, &d->port))
        return bp_fail(e, "%s probed but no ethdev port by that name", d->name);
    return 0;
}

/* rte_pktmbuf_pool_create, but with objects packed back to back (NO_IOVA_CONTIG): with
 * 4 KiB pages (--no-huge) and physical IOVAs the default keeps each 2.3 KiB mbuf inside a
 * page, one per page, while net_af_xdp registers populated_size * object size bytes from
 * the pool's start as its umem: the mbufs past that end are not in the umem, and the
 * kernel silently skipped every TX descriptor pointing at one (a stall after ~100 frames
 * once the pool's FIFO reached them). Virtual devices never use IOVAs. */
static struct rte_mempool *create_pool(const char *name, int socket)
{
    struct rte_pktmbuf_pool_private priv = {.mbuf_data_room_size = RTE_MBUF_DEFAULT_BUF_SIZE};
    struct rte_mempool *mp = rte_mempool_create_empty(
        name, MBUFS, sizeof(struct rte_mbuf) + RTE_MBUF_DEFAULT_BUF_SIZE, MBUF_CACHE,
        sizeof priv, socket, RTE_MEMPOOL_F_NO_IOVA_CONTIG);
    if (!mp)
        return NULL;
    int rc = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL);
    if (!rc) {
        rte_pktmbuf_pool_init(mp, &priv);
        rc = rte_mempool_populate_default(mp) < 0 ? -1 : 0;
    }
    if (!rc && mp->nb_mem_chunks != 1) {  /* net_af_xdp's umem must be one span */
        rte_errno = ENOMEM;
        rc = -1;
    }
    if (rc) {
        int err = rte_errno;
        rte_mempool_free(mp);
        rte_errno = err;
        return NULL;
    }
    rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
    return mp;
}

static int start_port(struct bp_engine *e, struct dpdk_drv *d)
{
    char pool_name[RTE_MEMPOOL_NAMESIZE];
    snprintf(pool_name, sizeof pool_name, "al_pool%u", d->serial);
    int socket = rte_eth_dev_socket_id(d->port);
    d->pool = create_pool(pool_name, socket < 0 ? 0 : socket);
    if (!d->pool)
        return bp_fail(e, "creating the mbuf pool (%u mbufs): %s (raise -m in eal_args)",
                       MBUFS, rte_strerror(rte_errno));
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof conf);
    int rc = rte_eth_dev_configure(d->port, 1, 1, &conf);
    if (!rc)
        rc = rte_eth_rx_queue_setup(d->port, 0, RX_DESC, socket < 0 ? 0 : socket, NULL, d->pool);
    if (!rc)
        rc = rte_eth_tx_queue_setup(d->port, 0, TX_DESC, socket < 0 ? 0 : socket, NULL);
    if (!rc)
        rc = rte_eth_dev_start(d->port);
    if (rc)
        return bp_fail(e, "starting DPDK port %s: %s", d->name, rte_strerror(-rc));
    d->started = 1;
    rte_eth_promiscuous_enable(d->port);  /* multicast MACs; filtering is ours */
    uint16_t mtu = 0;
    rte_eth_dev_get_mtu(d->port, &mtu);
    e->frame_size = mtu ? (uint32_t)mtu + PKT_ETH_HLEN + PKT_VLAN_HLEN : 1518;
    if (e->frame_size > RTE_MBUF_DEFAULT_DATAROOM)
        e->frame_size = RTE_MBUF_DEFAULT_DATAROOM;
    return 0;
}

static int dpdk_setup(struct bp_engine *e)
{
    struct dpdk_drv *d = calloc(1, sizeof *d);
    if (!d)
        return bp_fail(e, "out of memory");
    e->drv = d;
    /* rte_eal_init pins the calling thread to its main lcore (core 0 when none is asked):
     * pin it where asked, else give it back the CPUs it had (core 0 may be another
     * busy thread's, as the ping-pong client's in benchmarks/bypass_rtt.py). */
    cpu_set_t set;
    CPU_ZERO(&set);
    if (e->cfg.core >= 0)
        CPU_SET(e->cfg.core, &set);
    else if (pthread_getaffinity_np(pthread_self(), sizeof set, &set))
        CPU_ZERO(&set);
    if (init_eal(e))
        goto fail;
    if (CPU_COUNT(&set))
        pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    if (probe_port(e, d) || start_port(e, d))
        goto fail;
    uint8_t mac[6] = {0}, zero[6] = {0};
    memcpy(mac, e->cfg.mac, 6);
    if (memcmp(mac, zero, 6) == 0) {
        struct rte_ether_addr addr;
        if (rte_eth_macaddr_get(d->port, &addr)) {
            bp_fail(e, "cannot read the MAC of DPDK port %s", d->name);
            goto fail;
        }
        memcpy(mac, addr.addr_bytes, 6);
    }
    bp_init_packets(e, mac);
    return 0;
fail:
    dpdk_teardown(e);
    return -1;
}

static int dpdk_poll(struct bp_engine *e)
{
    struct dpdk_drv *d = e->drv;
    struct rte_mbuf *bufs[BP_BURST];
    uint16_t n = rte_eth_rx_burst(d->port, 0, bufs, BP_BURST);
    if (n) {
        int64_t now = bp_now_ns(CLOCK_REALTIME);
        for (uint16_t i = 0; i < n; i++) {
            if (bufs[i]->nb_segs == 1)
                bp_rx_frame(e, rte_pktmbuf_mtod(bufs[i], const uint8_t *),
                            rte_pktmbuf_data_len(bufs[i]), now);
            else
                e->pkt.drops[PKT_DROP_SHORT]++;  /* jumbo chains: not for market data */
        }
        rte_pktmbuf_free_bulk(bufs, n);
        bp_rx_done(e);
    }

    if (bp_tx_idle(e))  /* the common idle poll: no mbuf to allocate and free, no clock */
        return n;
    struct rte_mbuf *out[BP_BURST];
    uint16_t m = 0;
    int64_t mono = bp_now_ns(CLOCK_MONOTONIC);
    while (m < BP_BURST) {
        struct rte_mbuf *mb = rte_pktmbuf_alloc(d->pool);
        if (!mb) {
            e->st.tx_errors++;
            break;
        }
        uint8_t *frame = rte_pktmbuf_mtod(mb, uint8_t *);
        uint32_t cap = rte_pktmbuf_tailroom(mb);
        uint32_t len = bp_tx_next(e, frame, cap < e->frame_size ? cap : e->frame_size, mono);
        if (!len) {
            rte_pktmbuf_free(mb);
            break;
        }
        mb->data_len = (uint16_t)len;
        mb->pkt_len = len;
        out[m++] = mb;
    }
    uint16_t sent = 0;
    for (int tries = 0; sent < m && tries < 16; tries++)
        sent += rte_eth_tx_burst(d->port, 0, out + sent, m - sent);
    if (sent < m) {
        e->st.tx_errors += m - sent;
        rte_pktmbuf_free_bulk(out + sent, m - sent);
    }
    return n + m;
}

static void dpdk_wait(struct bp_engine *e, int timeout_us)
{
    /* A virtual PMD has no RX descriptor to sleep on: wake for TX or after a short nap. */
    struct pollfd pfd = {.fd = e->tx_efd, .events = POLLIN};
    int us = timeout_us < 20 ? timeout_us : 20;
    struct timespec ts = {0, (long)us * 1000};
    ppoll(&pfd, 1, &ts, NULL);
}

static void dpdk_teardown(struct bp_engine *e)
{
    struct dpdk_drv *d = e->drv;
    if (!d)
        return;
    if (d->started) {
        rte_eth_promiscuous_disable(d->port);
        rte_eth_dev_stop(d->port);
    }
    if (d->name[0]) {
        rte_eth_dev_close(d->port);
        rte_eal_hotplug_remove("vdev", d->name);
    }
    if (d->pool)
        rte_mempool_free(d->pool);
    free(d);
    e->drv = NULL;
}

/* What the PMD counts as lost on receive (its counters: reading them races benignly). */
static void dpdk_stats(struct bp_engine *e, struct bp_stats *out)
{
    struct dpdk_drv *d = e->drv;
    struct rte_eth_stats st;
    if (d->started && rte_eth_stats_get(d->port, &st) == 0)
        out->nic_rx_dropped = st.imissed + st.ierrors + st.rx_nombuf;
    for (int i = 0; i < d->npacket_fds; i++) {  /* reading resets them: accumulate */
        struct tpacket_stats ps;
        socklen_t len = sizeof ps;
        if (getsockopt(d->packet_fds[i], SOL_PACKET, PACKET_STATISTICS, &ps, &len) == 0)
            d->packet_drops += ps.tp_drops;
    }
    out->nic_rx_dropped += d->packet_drops;
}

const struct bp_ops bp_dpdk_ops = {"dpdk", dpdk_setup, dpdk_poll, dpdk_wait, dpdk_teardown,
                                   dpdk_stats};

struct bp_engine *dpdk_engine_start(const struct bp_config *cfg, char *error)
{
    return bp_start(BP_KIND_DPDK, cfg, error);
}
