/*
 * loopback-send.c - how fast can one TCP connection on loopback carry file
 * data, and what does the sender pay per MiB? The ceiling behind locusd's
 * 1 MiB read figures (BENCHMARKS.md, "1 MiB reads").
 *
 * A child process connects and reads everything into a 256 KiB buffer; the
 * parent sends TOTAL_MIB MiB of FILE (cached) in 1 MiB requests with one of:
 *   0  pread into a buffer, then write      (two copies: what tgtd does)
 *   1  sendfile                             (no copy in the sender)
 *   2  pread 256 KiB pieces, write each
 *   3  write from a shared mapping          (one copy: locusd's zero-copy)
 *
 * Build and run (the file should be in the page cache):
 *   cc -O2 -o /tmp/loopback-send benches/loopback-send.c
 *   dd if=/dev/urandom of=/var/tmp/f.img bs=1M count=256 && cat /var/tmp/f.img >/dev/null
 *   for m in 0 1 2 3; do /tmp/loopback-send $m /var/tmp/f.img 8000; done
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void write_all(int s, const char *p, size_t n) {
  while (n > 0) {
    ssize_t m = write(s, p, n);
    if (m <= 0) { perror("write"); exit(1); }
    p += m;
    n -= (size_t)m;
  }
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s MODE(0-3) FILE TOTAL_MIB\n", argv[0]);
    return 2;
  }
  int mode = atoi(argv[1]);
  long total = atol(argv[3]) << 20;
  const size_t chunk = 1 << 20;
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(ls, (void *)&a, sizeof a) || getsockname(ls, (void *)&a, &al) || listen(ls, 1)) {
    perror("listen");
    return 1;
  }
  pid_t pid = fork();
  if (pid == 0) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (void *)&a, sizeof a)) { perror("connect"); exit(1); }
    char *b = malloc(262144);
    long got = 0;
    while (got < total) {
      ssize_t n = recv(c, b, 262144, 0);
      if (n <= 0) break;
      got += n;
    }
    fprintf(stderr, "  receiver cpu %.1f us/MiB\n", cpu_seconds() / (total >> 20) * 1e6);
    exit(0);
  }
  int s = accept(ls, 0, 0), one = 1;
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int fd = open(argv[2], O_RDONLY);
  off_t fsz = lseek(fd, 0, SEEK_END);
  if (fd < 0 || fsz < (off_t)chunk) { fprintf(stderr, "need a file of at least 1 MiB\n"); return 1; }
  char *buf = malloc(chunk);
  char *map = mode == 3 ? mmap(0, fsz, PROT_READ, MAP_SHARED, fd, 0) : NULL;
  double t0 = now();
  off_t off = 0;
  for (long sent = 0; sent < total; sent += chunk, off += chunk) {
    if (off + (off_t)chunk > fsz) off = 0;
    if (mode == 0) {
      if (pread(fd, buf, chunk, off) != (ssize_t)chunk) { perror("pread"); return 1; }
      write_all(s, buf, chunk);
    } else if (mode == 1) {
      off_t o = off;
      for (size_t left = chunk; left > 0;) {
        ssize_t m = sendfile(s, fd, &o, left);
        if (m <= 0) { perror("sendfile"); return 1; }
        left -= (size_t)m;
      }
    } else if (mode == 2) {
      for (size_t p = 0; p < chunk; p += 262144) {
        if (pread(fd, buf, 262144, off + p) != 262144) { perror("pread"); return 1; }
        write_all(s, buf, 262144);
      }
    } else {
      write_all(s, map + off, chunk);
    }
  }
  double t1 = now();
  waitpid(pid, 0, 0);
  printf("mode %d: %.0f MB/s, sender cpu %.1f us/MiB\n", mode, total / (t1 - t0) / 1e6,
         cpu_seconds() / (total >> 20) * 1e6);
  return 0;
}
