/* AF_XDP engine: libxdp UMEM + XSK in copy mode on one queue (see bypass_core.h). */
#ifndef AIOLOWLAT_XSK_ENGINE_H
#define AIOLOWLAT_XSK_ENGINE_H
#include "bypass_core.h"

/* Start on cfg->ifname / cfg->queue; NULL with error (BP_ERROR_LEN bytes) on failure. */
struct bp_engine *xsk_engine_start(const struct bp_config *cfg, char *error);

#endif
