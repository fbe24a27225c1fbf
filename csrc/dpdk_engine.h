/* DPDK engine: a virtual-device port (net_af_xdp, else net_af_packet) per engine, the EAL
 * initialised once per process (see dpdk_engine.c and bypass_core.h). */
#ifndef AIOLOWLAT_DPDK_ENGINE_H
#define AIOLOWLAT_DPDK_ENGINE_H
#include "bypass_core.h"

/* Start on cfg->vdev (default "net_af_xdp,iface=<ifname>", falling back to
 * "net_af_packet,iface=<ifname>,framecnt=4096"); NULL with error on failure. */
struct bp_engine *dpdk_engine_start(const struct bp_config *cfg, char *error);

#endif
