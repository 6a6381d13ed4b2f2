/*
 * The lab guest's workload. Prints "HB seq=<n> boot=<id>" on the serial
 * console every second, so a test can tell where a guest runs (the line
 * appears in that node's console log), that it kept running (seq goes on)
 * and that it was not rebooted (boot id unchanged). It also dirties a
 * memory buffer at a set rate, making guests that are easy or hard to
 * migrate, and checks the buffer as it goes: each page must still hold the
 * stamp of the previous pass, so a move that loses a guest write (a page
 * the target holds stale) is seen, counted in "bad=" and reported once per
 * page as "HB corrupt". "pass=" counts the completed passes over the
 * buffer: pass=0 means the guest is still touching fresh memory.
 * Parameters come from the kernel command line:
 *   hb.dirty_mib=<MiB to allocate and dirty>    (default 0)
 *   hb.dirty_rate=<MiB per second, 0 = flat out> (default 0)
 *   hb.disk=<block device to stamp each beat into> (optional)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long param(const char *cmdline, const char *key, long fallback) {
    const char *p = strstr(cmdline, key);
    return p ? strtol(p + strlen(key), NULL, 10) : fallback;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    char cmdline[4096] = {0};
    int fd = open("/proc/cmdline", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof cmdline - 1);
        (void)n;
        close(fd);
    }
    long dirty_mib = param(cmdline, "hb.dirty_mib=", 0);
    long rate_mib = param(cmdline, "hb.dirty_rate=", 0);
    char disk[256] = {0};
    const char *d = strstr(cmdline, "hb.disk=");
    if (d) sscanf(d + 8, "%255s", disk);

    unsigned boot = 0;
    fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        ssize_t n = read(fd, &boot, sizeof boot);
        (void)n;
        close(fd);
    }
    size_t len = (size_t)dirty_mib << 20;
    uint8_t *buf = len ? malloc(len) : NULL;
    if (len && !buf) {
        printf("HB error=malloc\n");
        len = 0;
    }
    const size_t page = 4096;
    size_t pos = 0;
    uint8_t stamp = 1, prev = 0; /* malloc'd pages read as zero */
    unsigned long seq = 0, passes = 0, bad = 0;
    double next_beat = now();
    for (;;) {
        double t = now();
        if (t >= next_beat) {
            printf("HB seq=%lu boot=%08x dirty_mib=%ld rate=%ld pass=%lu bad=%lu\n", seq, boot,
                   dirty_mib, rate_mib, passes, bad);
            fflush(stdout);
            if (disk[0]) {
                int dfd = open(disk, O_WRONLY | O_SYNC);
                if (dfd >= 0) {
                    char line[64];
                    int n = snprintf(line, sizeof line, "HB seq=%lu boot=%08x\n", seq, boot);
                    ssize_t w = pwrite(dfd, line, (size_t)n, (off_t)(seq % 1024) * 512);
                    (void)w;
                    close(dfd);
                }
            }
            seq++;
            next_beat += 1.0;
        }
        if (!len) {
            usleep(50000);
            continue;
        }
        /* Touch one byte per page: 10 ms worth of the rate per slice. The
         * first pass, which faults the buffer in, runs flat out: the guest
         * is settled (pass >= 1) a beat after boot, whatever its rate. */
        int paced = rate_mib && passes > 0;
        size_t pages = paced ? (size_t)((rate_mib << 20) / 100 / page) : 4096;
        if (pages == 0) pages = 1;
        for (size_t i = 0; i < pages; i++) {
            if (buf[pos] != prev) {
                if (bad < 16) {
                    printf("HB corrupt page=%zu want=%u got=%u pass=%lu\n", pos / page, prev,
                           buf[pos], passes);
                    fflush(stdout);
                }
                bad++;
            }
            buf[pos] = stamp;
            pos += page;
            if (pos >= len) {
                pos = 0;
                passes++;
                /* Stamps skip 0, the value of a page never written, so a
                 * page that a move left zeroed is caught too. */
                prev = stamp;
                stamp = stamp == 255 ? 1 : (uint8_t)(stamp + 1);
            }
        }
        if (paced) usleep(10000);
    }
}
