/* Single-producer / single-consumer ring of fixed-size packet slots in shared memory.
 *
 * The producer owns head (and its cached copy of tail), the consumer owns tail (and
 * its cached copy of head); each sits on its own cache line so the two cores do not
 * bounce one line on every packet. Bounded: a full ring never blocks the producer,
 * the caller counts the overflow and drops. Reserve/commit lets the producer publish a
 * whole burst with one release store. Internal header (static inline, not for cffi).
 */
#ifndef AIOLOWLAT_SPSC_H
#define AIOLOWLAT_SPSC_H
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/mman.h>

#define SPSC_LINE 64

/* Per-slot metadata ahead of the data: where a datagram goes to or came from. */
struct spsc_slot {
    uint32_t len;
    uint32_t ip;      /* peer IPv4, host order */
    uint16_t port;    /* peer port */
    uint16_t local_port;
    uint32_t local_ip;
    int64_t ns;       /* receive time (CLOCK_REALTIME ns) */
    uint8_t data[];
};

struct spsc {
    _Alignas(SPSC_LINE) _Atomic uint32_t head;  /* producer: next slot to write */
    uint32_t tail_cache;
    uint32_t pending;  /* reserved, not yet published */
    _Alignas(SPSC_LINE) _Atomic uint32_t tail;  /* consumer: next slot to read */
    uint32_t head_cache;
    _Alignas(SPSC_LINE) uint32_t mask;
    uint32_t slot_size;  /* bytes per slot, metadata included */
    uint8_t *slots;
    size_t map_len;
};

/* slots must be a power of two; returns 0 or -1 (no memory). */
static inline int spsc_init(struct spsc *r, uint32_t slots, uint32_t slot_size)
{
    r->map_len = (size_t)slots * slot_size;
    void *mem = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return -1;
    r->slots = mem;
    r->mask = slots - 1;
    r->slot_size = slot_size;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->tail_cache = r->head_cache = r->pending = 0;
    return 0;
}

static inline void spsc_free(struct spsc *r)
{
    if (r->slots)
        munmap(r->slots, r->map_len);
    r->slots = NULL;
}

static inline uint32_t spsc_data_size(const struct spsc *r)
{
    return r->slot_size - (uint32_t)sizeof(struct spsc_slot);
}

static inline struct spsc_slot *spsc_at(const struct spsc *r, uint32_t index)
{
    return (struct spsc_slot *)(r->slots + (size_t)(index & r->mask) * r->slot_size);
}

/* Producer: the next free slot (not yet visible), or NULL when full. */
static inline struct spsc_slot *spsc_reserve(struct spsc *r)
{
    uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed) + r->pending;
    if (head - r->tail_cache > r->mask) {
        r->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (head - r->tail_cache > r->mask)
            return NULL;
    }
    r->pending++;
    return spsc_at(r, head);
}

/* Producer: publish every reserved slot; returns how many. */
static inline uint32_t spsc_publish(struct spsc *r)
{
    uint32_t n = r->pending;
    if (n) {
        atomic_store_explicit(&r->head, atomic_load_explicit(&r->head, memory_order_relaxed) + n,
                              memory_order_release);
        r->pending = 0;
    }
    return n;
}

/* Consumer: slots ready to read, from tail on. */
static inline uint32_t spsc_ready(struct spsc *r)
{
    uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (r->head_cache == tail)
        r->head_cache = atomic_load_explicit(&r->head, memory_order_acquire);
    return r->head_cache - tail;
}

static inline struct spsc_slot *spsc_peek(struct spsc *r, uint32_t i)
{
    return spsc_at(r, atomic_load_explicit(&r->tail, memory_order_relaxed) + i);
}

/* Consumer: hand n slots back to the producer. */
static inline void spsc_release(struct spsc *r, uint32_t n)
{
    atomic_store_explicit(&r->tail, atomic_load_explicit(&r->tail, memory_order_relaxed) + n,
                          memory_order_release);
}

/* Either side: nothing published and unread (a fresh look at both indices). */
static inline int spsc_empty(struct spsc *r)
{
    return atomic_load_explicit(&r->head, memory_order_acquire) ==
           atomic_load_explicit(&r->tail, memory_order_acquire);
}

#endif
