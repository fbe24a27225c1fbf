/* The floor reference of benchmarks/bypass_rtt.py: UDP ping-pong on kernel sockets,
 * busy-polling (non-blocking recv in a spin), pinned to a core. A standalone program.
 *
 *   bypass_pingpong client HOST PORT COUNT SIZE CORE   ping-pong; prints rtt percentiles
 *   bypass_pingpong echo PORT CORE SECONDS            echo everything back for SECONDS
 *   bypass_pingpong flood HOST PORT COUNT SIZE CORE   send COUNT datagrams as fast as possible
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void pin(int core)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(core, &set);
    if (core >= 0 && sched_setaffinity(0, sizeof set, &set))
        perror("sched_setaffinity");
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int udp_socket(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        exit(1);
    }
    return fd;
}

static struct sockaddr_in address(const char *host, int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", host);
        exit(2);
    }
    return a;
}

/* Spin on a non-blocking receive until a datagram or the deadline; its length or -1. */
static ssize_t spin_recv(int fd, char *buf, size_t len, int64_t deadline)
{
    for (;;) {
        ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
        if (n >= 0)
            return n;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
        if (now_ns() > deadline)
            return -1;
    }
}

static int client(const char *host, int port, int count, int size, int core)
{
    pin(core);
    int fd = udp_socket();
    struct sockaddr_in to = address(host, port);
    if (connect(fd, (struct sockaddr *)&to, sizeof to)) {
        perror("connect");
        return 1;
    }
    char buf[65536];
    memset(buf, 'p', sizeof buf);
    int64_t *rtt = calloc((size_t)count, sizeof *rtt);
    int done = 0, lost = 0;
    int64_t start = now_ns();
    for (int i = 0; i < count && lost < 100; i++) {
        int64_t t0 = now_ns();
        memcpy(buf + 1, &i, sizeof i);  /* buf[0] stays "p": "f" marks flood datagrams */
        if (send(fd, buf, (size_t)size, 0) < 0) {
            lost++;
            continue;
        }
        int got;
        ssize_t n;
        do {  /* skip a late answer to an earlier ping */
            n = spin_recv(fd, buf, sizeof buf, t0 + 200 * 1000 * 1000);
            memcpy(&got, buf + 1, sizeof got);
        } while (n >= 5 && got != i);
        if (n < 0) {
            lost++;
            continue;
        }
        rtt[done++] = now_ns() - t0;
    }
    double seconds = (double)(now_ns() - start) / 1e9;
    qsort(rtt, (size_t)done, sizeof *rtt, cmp64);
    if (!done) {
        printf("{\"error\": \"no answers\", \"lost\": %d}\n", lost);
        return 1;
    }
    printf("{\"rtt_p50_us\": %.2f, \"rtt_p99_us\": %.2f, \"rtt_p999_us\": %.2f, "
           "\"round_trips_per_s\": %.0f, \"count\": %d, \"lost\": %d}\n",
           rtt[done / 2] / 1e3, rtt[(int)(done * 0.99)] / 1e3, rtt[(int)(done * 0.999)] / 1e3,
           done / seconds, done, lost);
    return 0;
}

static int echo(int port, int core, double seconds)
{
    pin(core);
    int fd = udp_socket();
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(fd, (struct sockaddr *)&me, sizeof me)) {
        perror("bind");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char buf[65536];
    int64_t end = now_ns() + (int64_t)(seconds * 1e9);
    while (now_ns() < end) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &len);
        if (n >= 0)
            sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
    }
    return 0;
}

static int flood(const char *host, int port, int count, int size, int core)
{
    pin(core);
    int fd = udp_socket();
    struct sockaddr_in to = address(host, port);
    char buf[65536];
    memset(buf, 'f', sizeof buf);
    int sent = 0;
    int64_t start = now_ns(), deadline = start + 20LL * 1000 * 1000 * 1000;
    while (sent < count && now_ns() < deadline) {
        if (sendto(fd, buf, (size_t)size, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) >= 0)
            sent++;
    }
    printf("{\"sent\": %d, \"send_per_s\": %.0f}\n", sent, sent / ((now_ns() - start) / 1e9));
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 7 && strcmp(argv[1], "client") == 0)
        return client(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    if (argc == 5 && strcmp(argv[1], "echo") == 0)
        return echo(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    if (argc == 7 && strcmp(argv[1], "flood") == 0)
        return flood(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    fprintf(stderr, "usage: see the comment at the top of bypass_pingpong.c\n");
    return 2;
}
