/*
 * loopback-rtt.c - what one request/response round trip between two
 * processes costs on loopback, with no runtime in the way: the floor under
 * a mirrored write's added latency at queue depth 1 (BENCHMARKS.md,
 * "Mirrored LUNs through the initiator", QD1).
 *
 * A child process (the "storage node") reads a request of REQ bytes and
 * answers with 16 bytes; the parent (the "writer") sends a request, waits
 * for the answer, and times each round trip. Plain blocking sockets with
 * TCP_NODELAY, as both ends of the replication protocol use.
 *
 * Mode 0: both processes block in read() between messages (what two idle
 *         locusd processes do: each message wakes a sleeping process).
 * Mode 1: both spin on non-blocking reads (no sleep, no wakeup): what the
 *         round trip costs when nobody has to be woken.
 *
 * Build and run:
 *   cc -O2 -o /tmp/loopback-rtt benches/loopback-rtt.c
 *   /tmp/loopback-rtt 0 4160 3; /tmp/loopback-rtt 1 4160 3
 * (4160 bytes: a 4 KiB write with the replication protocol's header.)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int spin;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Reads exactly n bytes (spinning on EAGAIN in mode 1); 0 at EOF. */
static int read_full(int fd, char *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r == 0) return 0;
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      perror("read");
      exit(1);
    }
    got += (size_t)r;
  }
  return 1;
}

static void write_full(int fd, const char *buf, size_t n) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = write(fd, buf + put, n - put);
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      perror("write");
      exit(1);
    }
    put += (size_t)r;
  }
}

static void tune(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (spin) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODE(0 block|1 spin) REQ_BYTES SECONDS\n", argv[0]);
    return 2;
  }
  spin = atoi(argv[1]);
  size_t req = (size_t)atol(argv[2]);
  double secs = atof(argv[3]);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
      getsockname(l, (struct sockaddr *)&a, &al)) {
    perror("listen");
    return 1;
  }
  char *buf = calloc(1, req);
  pid_t child = fork();
  if (child == 0) {
    int s = accept(l, NULL, NULL);
    tune(s);
    while (read_full(s, buf, req)) write_full(s, buf, 16);
    _exit(0);
  }
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(c, (struct sockaddr *)&a, sizeof a)) {
    perror("connect");
    return 1;
  }
  tune(c);
  size_t cap = 1 << 22, n = 0;
  double *lat = malloc(cap * sizeof *lat);
  char ans[16];
  double end = now_us() + secs * 1e6;
  while (n < cap && now_us() < end) {
    double t = now_us();
    write_full(c, buf, req);
    read_full(c, ans, sizeof ans);
    lat[n++] = now_us() - t;
  }
  close(c);
  waitpid(child, NULL, 0);
  qsort(lat, n, sizeof *lat, cmp);
  printf("%s, %zu-byte request: %zu round trips, p50 %.1f us, p99 %.1f us\n",
         spin ? "spinning" : "blocking", req, n, lat[n / 2], lat[n * 99 / 100]);
  return 0;
}
