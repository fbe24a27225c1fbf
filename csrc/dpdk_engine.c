/* The DPDK driver of the bypass engine: one port (a virtual device probed per engine,
 * net_af_xdp by default, else net_af_packet), one RX and one TX queue,
 * rte_eth_rx_burst / rte_eth_tx_burst.
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
#include <linux/if_link.h>
#include <linux/if_packet.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
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

enum { MBUFS = 4095, MBUF_CACHE = 256, RX_DESC = 2048, TX_DESC = 2048, MAX_ARGS = 64,
       AF_XDP_RETRY_MS = 1000 };

static const char DEFAULT_EAL_ARGS[] =
    "--no-huge --no-pci --no-shconf -m 256 --no-telemetry --log-level=error";

static pthread_mutex_t eal_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t port_lock = PTHREAD_MUTEX_INITIALIZER;  /* one port opens at a time */
static int eal_state;            /* 0 not yet, 1 initialised, -1 failed (cannot retry) */
static char eal_used[512];       /* the arguments it was initialised with */
static unsigned port_counter;    /* unique virtual device names per process */

enum { MAX_PACKET_FDS = 8, FD_SCAN = 4096, MAX_OWN_FDS = 16, FD_ID_LEN = 64 };

struct dpdk_drv {
    uint16_t port;
    unsigned serial;
    int started;
    int packet_fds[MAX_PACKET_FDS], npacket_fds;  /* net_af_packet's sockets, see below */
    int xsk_fd;                                   /* net_af_xdp's XSK, see below */
    int own_fds[MAX_OWN_FDS], nown_fds;           /* sockets and BPF objects it opened */
    char own_ids[MAX_OWN_FDS][FD_ID_LEN];
    uint32_t prog_id;                             /* the XDP program net_af_xdp attached */
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
    int own = dirfd(dir);  /* this listing's own descriptor: closed below, often reused */
    for (struct dirent *d; (d = readdir(dir));) {
        int fd = atoi(d->d_name);
        if (fd > 0 && fd < FD_SCAN && fd != own)
            set[fd / 8] |= (uint8_t)(1 << (fd % 8));
    }
    closedir(dir);
}

/* What fd refers to, unique while it is open: "socket:[inode]" or "anon_inode:bpf-map
 * id 12" (BPF objects share one anonymous inode: their id tells them apart); "" for
 * anything else. */
static void fd_identity(int fd, char *id)
{
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, id, FD_ID_LEN - 24);
    id[n > 0 ? n : 0] = 0;
    if (strncmp(id, "socket:", 7) == 0)
        return;
    if (strncmp(id, "anon_inode:bpf-", 15) != 0) {
        id[0] = 0;
        return;
    }
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "re");
    unsigned obj = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "map_id: %u", &obj) == 1 || sscanf(line, "prog_id: %u", &obj) == 1)
            break;
    if (f)
        fclose(f);
    if (obj)
        snprintf(id + strlen(id), 24, " id %u", obj);
    else
        id[0] = 0;
}

/* net_af_xdp's close leaves descriptors open here (libxdp 1.3 without a bpffs stops
 * half-way through xsk_socket__delete): its XSK, whose queue then stays busy (the next
 * start fails with EBUSY), its xsks_map, and a descriptor of the XDP program it attached,
 * opened by the close itself. Closed here: what the port opened and its close left open
 * (the same object still), and whatever still refers to the port's program, which no
 * one else loaded. */
static void close_leftovers(struct dpdk_drv *d)
{
    char id[FD_ID_LEN], prog[FD_ID_LEN];
    for (int i = 0; i < d->nown_fds; i++) {
        fd_identity(d->own_fds[i], id);
        if (id[0] && strcmp(id, d->own_ids[i]) == 0)
            close(d->own_fds[i]);
    }
    d->nown_fds = 0;
    if (!d->prog_id)
        return;
    snprintf(prog, sizeof prog, "anon_inode:bpf-prog id %u", d->prog_id);
    uint8_t open_now[FD_SCAN / 8];
    open_fds(open_now);
    for (int fd = 1; fd < FD_SCAN; fd++) {
        if (!(open_now[fd / 8] & (1 << (fd % 8))))
            continue;
        fd_identity(fd, id);
        if (strcmp(id, prog) == 0)
            close(fd);
    }
    d->prog_id = 0;
}

/* The sockets and BPF objects the port opened (new descriptors of this process): all
 * for close_leftovers, and the kernel sockets for the drops the PMDs of DPDK 22.11 do
 * not report: net_af_packet never reads its sockets' PACKET_STATISTICS, and net_af_xdp's
 * imissed leaves out the frames its XSK's RX ring had no room for (rx_ring_full). */
static void note_port_fds(struct dpdk_drv *d, const uint8_t *before)
{
    uint8_t after[FD_SCAN / 8];
    open_fds(after);
    for (int fd = 1; fd < FD_SCAN; fd++) {
        int is_new = (after[fd / 8] & ~before[fd / 8]) & (1 << (fd % 8));
        int domain = 0;
        socklen_t len = sizeof domain;
        if (is_new && d->nown_fds < MAX_OWN_FDS) {
            fd_identity(fd, d->own_ids[d->nown_fds]);
            if (d->own_ids[d->nown_fds][0])
                d->own_fds[d->nown_fds++] = fd;
        }
        if (!is_new || getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len))
            continue;
        if (domain == AF_PACKET && d->npacket_fds < MAX_PACKET_FDS)
            d->packet_fds[d->npacket_fds++] = fd;
        else if (domain == AF_XDP && d->xsk_fd < 0)
            d->xsk_fd = fd;
    }
}

/* Which virtual device (EngineConfig.vdev, else the default below).
 *
 * net_af_xdp is the default: an XSK in copy mode, as our af_xdp engine's, with the mbuf
 * pool as its umem (see create_pool). In benchmarks/bypass_rtt.py --quick on veth it
 * answers about as fast as our af_xdp engine and mostly faster than net_af_packet: p50
 * medians of 3 rounds 1.13-1.49x the C floor (af_xdp 1.09-1.48x, net_af_packet
 * 1.24-1.68x), single rounds 1.01-1.82x (0.94-1.78x, 1.28-2.01x), other sessions
 * loading both cores.
 * net_af_packet's TX ring makes the kernel build each frame as a zero-copy page-fragment
 * skb (tpacket_snd), which a veth copies into a fresh page when it crosses into the peer
 * namespace (skb_copy_ubufs); perf put its sendto at about 4 us per round trip against
 * 1.5 us for an XSK. net_af_packet stays the fallback, for an interface that takes no
 * XDP program (another program is on it, no CAP_BPF): any failure to bring net_af_xdp up
 * falls back to it, and stats' xdp_mode says which runs (0: net_af_packet). net_af_xdp's
 * earlier stall on veth after ~160 frames was our pool, not the PMD (see create_pool),
 * and its close leaks what close_leftovers closes. */
static int probe_port(struct bp_engine *e, struct dpdk_drv *d, const char *spec)
{
    char vdev[sizeof e->cfg.vdev];
    snprintf(vdev, sizeof vdev, "%s", spec);
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
    int rc = rte_dev_probe(devargs);
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

/* Undo open_port: stop, close and remove the port, free its pool. */
static void close_port(struct dpdk_drv *d)
{
    if (d->started) {
        rte_eth_promiscuous_disable(d->port);
        rte_eth_dev_stop(d->port);
    }
    if (d->name[0]) {
        rte_eth_dev_close(d->port);
        rte_eal_hotplug_remove("vdev", d->name);
    }
    close_leftovers(d);  /* before the pool goes: it is the XSK's umem */
    if (d->pool)
        rte_mempool_free(d->pool);
    d->started = 0, d->name[0] = 0, d->pool = NULL;
    d->npacket_fds = 0, d->xsk_fd = -1, d->packet_drops = 0;
}

/* Probe and start the vdev of spec ("net_af_xdp,iface=X,..."); closed again on failure. */
static int open_port(struct bp_engine *e, struct dpdk_drv *d, const char *spec)
{
    uint8_t before[FD_SCAN / 8];
    pthread_mutex_lock(&port_lock);  /* the sockets that appear meanwhile are this port's */
    open_fds(before);
    int rc = probe_port(e, d, spec);
    if (!rc)
        rc = start_port(e, d);  /* net_af_xdp creates its XSK here, in the RX queue set-up */
    note_port_fds(d, before);  /* failed or not: close_port then checks them */
    pthread_mutex_unlock(&port_lock);
    if (rc)
        close_port(d);
    return rc;
}

/* net_af_xdp attaches libxdp's xsk_def_prog only where no program is: one that a killed
 * process left (its, or the af_xdp engine's) is detached first, and counted; someone
 * else's stays, and net_af_packet is used instead. */
static void clear_stale_program(struct bp_engine *e, int ifindex)
{
    if (bp_xdp_detach_stale(ifindex) == 1)
        e->st.stale_xdp_cleared++;
}

/* net_af_xdp on the interface, else net_af_packet (see probe_port for why); when both
 * fail, the error names both causes. */
static int open_default_port(struct bp_engine *e, struct dpdk_drv *d, int ifindex)
{
    char spec[sizeof e->cfg.vdev], why[BP_ERROR_LEN] = "", name[BPF_OBJ_NAME_LEN];
    uint8_t mode;
    if (ifindex)
        clear_stale_program(e, ifindex);
    if (ifindex && !bp_xdp_attached(ifindex, name, sizeof name, &mode)) {
        /* The queue of an XSK closed a moment ago stays busy until the kernel has
         * released it (EBUSY): retry for a while, as the af_xdp engine does. */
        snprintf(spec, sizeof spec, "net_af_xdp,iface=%s%s", e->cfg.ifname,
                 e->cfg.busy_poll ? "" : ",busy_budget=0");  /* no recvfrom per empty poll */
        int quiet = !getenv("AIOLOWLAT_XDP_DEBUG");  /* its failed tries log at ERR level */
        if (quiet)
            rte_log_set_level_pattern("pmd.net.af_xdp*", RTE_LOG_CRIT);
        struct timespec pause = {0, 10 * 1000 * 1000};
        int rc;
        for (int waited = 0; (rc = open_port(e, d, spec)) && waited < AF_XDP_RETRY_MS;
             waited += 10) {
            e->st.start_retries++;
            nanosleep(&pause, NULL);
        }
        if (quiet)
            rte_log_set_level_pattern("pmd.net.af_xdp*", (uint32_t)rte_log_get_global_level());
        if (!rc)
            return 0;
        snprintf(why, sizeof why, "%s", e->error);
    }
    snprintf(spec, sizeof spec, "net_af_packet,iface=%s,framecnt=4096", e->cfg.ifname);
    if (!open_port(e, d, spec))
        return 0;
    if (why[0]) {
        char second[BP_ERROR_LEN];
        snprintf(second, sizeof second, "%s", e->error);
        return bp_fail(e, "%.240s; and net_af_xdp before it: %.240s", second, why);
    }
    return -1;
}

static int quiet_xdp(enum libxdp_print_level level, const char *fmt, va_list ap)
{
    (void)level, (void)fmt, (void)ap;
    return 0;  /* failures reach the caller as e->error, with the fix */
}

static int quiet_bpf(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    (void)level, (void)fmt, (void)ap;
    return 0;
}

static int dpdk_setup(struct bp_engine *e)
{
    struct dpdk_drv *d = calloc(1, sizeof *d);
    if (!d)
        return bp_fail(e, "out of memory");
    e->drv = d;
    d->xsk_fd = -1;
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
    if (!getenv("AIOLOWLAT_XDP_DEBUG")) {  /* net_af_xdp's libxdp chats on stderr */
        libxdp_set_print(quiet_xdp);
        libbpf_set_print(quiet_bpf);
    }
    int ifindex = (int)if_nametoindex(e->cfg.ifname);
    if (ifindex && strncmp(e->cfg.vdev, "net_af_xdp", 10) == 0)
        clear_stale_program(e, ifindex);
    if (e->cfg.vdev[0] ? open_port(e, d, e->cfg.vdev) : open_default_port(e, d, ifindex))
        goto fail;
    char name[BPF_OBJ_NAME_LEN];
    uint8_t mode = 0;
    if (d->xsk_fd >= 0 && ifindex &&
        (d->prog_id = bp_xdp_attached(ifindex, name, sizeof name, &mode)))
        e->st.xdp_mode = mode == XDP_ATTACHED_SKB ? BP_XDP_SKB : BP_XDP_NATIVE;
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

/* A thread that polls but did not initialise the EAL (the loop's thread inline; a later
 * engine's thread) has no lcore, so no mempool cache: every mbuf taken or given back
 * went through the pool's shared ring. Registered once, it gets one: the bypass_rtt
 * ping-pong p50 was lower in each of 6 interleaved runs (by 0.3-1.6 us of ~11). An
 * engine thread gives its lcore back at teardown. */
static __thread int lcore_tried, lcore_registered;

static void register_lcore(void)
{
    lcore_tried = 1;
    if (rte_lcore_id() == LCORE_ID_ANY)
        lcore_registered = rte_thread_register() == 0;
}

static int dpdk_poll(struct bp_engine *e)
{
    struct dpdk_drv *d = e->drv;
    if (!lcore_tried)
        register_lcore();
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
    /* Sleep until a frame or a datagram to send comes: net_af_xdp's XSK says when its RX
     * ring has a frame, as the af_xdp engine's does. net_af_packet's sockets are watched
     * too, with a short nap as the bound: whether their poll() tracks the ring the PMD
     * reads is theirs to say (and other vdevs have nothing to sleep on). */
    struct dpdk_drv *d = e->drv;
    struct pollfd fds[MAX_PACKET_FDS + 2] = {{.fd = e->tx_efd, .events = POLLIN}};
    nfds_t n = 1;
    if (d->xsk_fd >= 0)
        fds[n++] = (struct pollfd){.fd = d->xsk_fd, .events = POLLIN};
    for (int i = 0; i < d->npacket_fds; i++)
        fds[n++] = (struct pollfd){.fd = d->packet_fds[i], .events = POLLIN};
    int us = d->xsk_fd >= 0 || timeout_us < 20 ? timeout_us : 20;
    struct timespec ts = {0, (long)us * 1000};
    ppoll(fds, n, &ts, NULL);
}

static void dpdk_teardown(struct bp_engine *e)
{
    struct dpdk_drv *d = e->drv;
    if (!d)
        return;
    close_port(d);
    if (lcore_registered)  /* the engine thread that polled, about to exit */
        rte_thread_unregister();
    lcore_tried = lcore_registered = 0;
    free(d);
    e->drv = NULL;
}

/* What was lost on receive before the engine saw it: the PMD's counters and the kernel
 * sockets' (see note_port_fds; reading them races benignly). */
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
    struct xdp_statistics xs;
    socklen_t len = sizeof xs;
    if (d->xsk_fd >= 0 && getsockopt(d->xsk_fd, SOL_XDP, XDP_STATISTICS, &xs, &len) == 0)
        out->nic_rx_dropped += xs.rx_ring_full + xs.rx_invalid_descs;  /* imissed: rx_dropped */
}

const struct bp_ops bp_dpdk_ops = {"dpdk", dpdk_setup, dpdk_poll, dpdk_wait, dpdk_teardown,
                                   dpdk_stats};

struct bp_engine *dpdk_engine_start(const struct bp_config *cfg, char *error)
{
    return bp_start(BP_KIND_DPDK, cfg, error);
}
