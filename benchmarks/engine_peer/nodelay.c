/* LD_PRELOAD shim for the "rivetkit, TCP_NODELAY forced" baseline of `python -m benchmarks
 * engine`: sets TCP_NODELAY on every TCP socket the process connects or accepts. rivetkit's
 * envoy client (napi, Rust) leaves Nagle on for its link to the engine; with delayed ACKs a
 * second small write in a row waits ~40 ms. The benchmark shows rivetkit both as shipped and
 * with this shim, so the comparison does not rest on one socket option. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static void nodelay(int fd) {
    int one = 1;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) nodelay(fd);
    return real(fd, addr, len);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = dlsym(RTLD_NEXT, "accept");
    int conn = real(fd, addr, len);
    nodelay(conn);
    return conn;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = dlsym(RTLD_NEXT, "accept4");
    int conn = real(fd, addr, len, flags);
    nodelay(conn);
    return conn;
}
