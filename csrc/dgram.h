/* Datagram helpers shared by the io_uring core and the kernel transport. */
#ifndef AIOLOWLAT_DGRAM_H
#define AIOLOWLAT_DGRAM_H
#include <stddef.h>
#include <stdint.h>

/* Receive time in ns from a control buffer: the raw hardware stamp of
 * SCM_TIMESTAMPING when the NIC gave one, else its software stamp, else
 * SCM_TIMESTAMPNS; 0 when none is there. */
int64_t al_rx_time(const void *control, size_t len);

/* al_rx_time, or the time now when the kernel gave none: it stamps only once
 * timestamping is on system-wide, which it switches on lazily, after the
 * first datagrams to a socket that asked for it. */
int64_t al_rx_time_or_now(const void *control, size_t len);

/* Up to max datagrams in one recvmmsg (non-blocking), received into slots of `slot`
 * bytes and then packed back to back from buf[0]; per datagram its length
 * (negative: truncated to the slot, which keeps `slot` bytes; counted by the caller),
 * receive time (al_rx_time_or_now) and source address (AL_DGRAM_NAME_SPACE bytes
 * per entry of names, length in namelens, 0 when the same as the previous
 * datagram's). Returns the count, 0 when none is waiting, or -errno. */
int al_recv_batch(int fd, unsigned char *buf, unsigned slot, int max, int32_t *lens,
                  int64_t *stamps, unsigned char *names, uint32_t *namelens);

#endif
