/* DPDK engine: a virtual-device port (net_af_packet by default) per engine, the EAL
 * initialised once per process (see dpdk_engine.c and bypass_core.h). */
#ifndef AIOLOWLAT_DPDK_ENGINE_H
#define AIOLOWLAT_DPDK_ENGINE_H
#include "bypass_core.h"

/* Start on cfg->vdev (default "net_af_packet,iface=<ifname>"); NULL with error on failure. */
struct bp_engine *dpdk_engine_start(const struct bp_config *cfg, char *error);

#endif
